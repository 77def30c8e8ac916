"""Ensembles of really trained members: the math, the module, the exports and `predict`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.config import TrainConfig
from sweeper.data import SplitData
from sweeper.ensemble import (
    Ensemble,
    EnsembleReport,
    evaluate,
    greedy_selection,
    load_member,
    probabilities,
)
from sweeper.errors import SweeperError
from sweeper.export import export, load_exported, predict, read_images
from sweeper.train import train
from sweeper.trial import save_best

MEMBERS = (("cnn2", 0), ("cnn2", 1), ("lenet5", 2))  # (model, seed); the model is the group
TEST = 2000


@dataclass
class Trained:
    data: SplitData  # test split cut to TEST images
    members: list[tuple[str, Path]]
    ensemble: Ensemble
    report: EnsembleReport
    val_probs: list[np.ndarray]  # computed here, apart from evaluate()
    test_probs: list[np.ndarray]


@pytest.fixture(scope="module")
def trained(small_cifar: SplitData, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    folder = tmp_path_factory.mktemp("members")
    members = []
    for model, seed in MEMBERS:
        config = TrainConfig(
            model=model,
            seed=seed,
            epochs=1,
            optimizer="adam",
            lr=2e-3,
            weight_decay=0.0,
            val_size=1000,
            train_size=2000,
            device="cpu",
            threads=2,
        )
        result = train(config, small_cifar)
        path = folder / f"{model}-seed{seed}.pt"
        save_best(path, result, config, small_cifar)
        members.append((model, path))
    # the first 2,000 test images keep the file quick; the export checks use 1,000 of them
    data = replace(small_cifar, test_x=small_cifar.test_x[:TEST], test_y=small_cifar.test_y[:TEST])
    ensemble, report = evaluate(
        members, (data.val_x, data.val_y), (data.test_x, data.test_y), greedy=True
    )
    val_probs, test_probs = [], []
    for _, path in members:
        model, saved = load_member(path)
        val_probs.append(probabilities(model, saved["mean"], saved["std"], data.val_x))
        test_probs.append(probabilities(model, saved["mean"], saved["std"], data.test_x))
    return Trained(data, members, ensemble, report, val_probs, test_probs)


def _acc(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def _mean(probs: list[np.ndarray], chosen: list[int]) -> np.ndarray:
    return np.stack([probs[i] for i in chosen]).astype(np.float64).mean(0)


def _one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_evaluate_matches_the_hand_computed_figures(trained: Trained) -> None:
    report, data = trained.report, trained.data
    for probs in trained.val_probs + trained.test_probs:
        assert probs.dtype == np.float32 and probs.shape[1] == 10
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    member_test = [_acc(p, data.test_y) for p in trained.test_probs]
    member_val = [_acc(p, data.val_y) for p in trained.val_probs]
    assert report.member_test_acc == member_test
    assert report.member_val_acc == member_val
    assert all(0.2 < a < 0.6 for a in member_test)  # learned something in one epoch; chance 0.1
    everyone = list(range(len(MEMBERS)))
    assert report.ensemble_test_acc == _acc(_mean(trained.test_probs, everyone), data.test_y)
    assert report.ensemble_val_acc == _acc(_mean(trained.val_probs, everyone), data.val_y)
    assert report.best_member_test_acc == max(member_test)
    assert report.gain == pytest.approx(report.ensemble_test_acc - max(member_test))
    assert list(report.groups) == ["cnn2", "lenet5"]
    mean, std = report.groups["cnn2"]
    assert mean == pytest.approx(np.mean(member_test[:2]))
    assert std == pytest.approx(abs(member_test[0] - member_test[1]) / np.sqrt(2))
    assert report.groups["lenet5"] == (pytest.approx(member_test[2]), 0.0)

    chosen = report.greedy
    assert chosen and len(chosen) <= 2 * len(MEMBERS)
    assert all(0 <= i < len(MEMBERS) for i in chosen)
    assert report.greedy_val_acc >= max(member_val)
    assert report.greedy_val_acc == _acc(_mean(trained.val_probs, chosen), data.val_y)
    assert report.greedy_test_acc == _acc(_mean(trained.test_probs, chosen), data.test_y)

    rows = report.table()
    assert [row["name"] for row in rows] == [
        "cnn2-seed0.pt",
        "cnn2-seed1.pt",
        "lenet5-seed2.pt",
        "ensemble (mean)",
        "ensemble (greedy)",
    ]
    assert len({tuple(row) for row in rows}) == 1  # the same columns in every row
    assert rows[3]["test_acc"] == report.ensemble_test_acc
    assert sum(row["greedy_weight"] for row in rows[:3]) == len(chosen)


def test_greedy_selection_adds_the_most_helpful_member_with_replacement() -> None:
    y = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])  # 3/4 right
    fixer = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.2, 0.8]])  # argmax ties: 0
    bad = 1 - good  # 1/4 right
    chosen = greedy_selection([bad, good, fixer], y, steps=4)
    assert chosen[0] == 1
    assert _acc(_mean([bad, good, fixer], chosen), y) == 1.0
    # equal accuracy: the lower log-loss wins
    sure, unsure = np.array([[0.99, 0.01]]), np.array([[0.6, 0.4]])
    assert greedy_selection([unsure, sure], np.array([0]), steps=1) == [1]


def test_module_forward_matches_the_evaluate_path(trained: Trained) -> None:
    x = trained.data.test_x[:1000]
    with torch.no_grad():
        out = trained.ensemble(torch.from_numpy(x.astype(np.float32) / 255)).numpy()
    assert out.shape == (1000, 10)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    expected = _mean([p[:1000] for p in trained.test_probs], [0, 1, 2])
    assert np.abs(out - expected).max() < 1e-5
    assert trained.ensemble.classes == trained.data.classes
    assert trained.ensemble.input_shape == (3, 32)
    assert not trained.ensemble.training


def test_weights_count_members_and_zero_drops_one(trained: Trained) -> None:
    models, saved = zip(*(load_member(path) for _, path in trained.members), strict=True)
    weighted = Ensemble(
        list(models),
        [s["mean"] for s in saved],
        [s["std"] for s in saved],
        trained.data.classes,
        weights=[2, 0, 1],
    )
    assert len(weighted.members) == 2
    x = trained.data.test_x[:200]
    with torch.no_grad():
        out = weighted(torch.from_numpy(x.astype(np.float32) / 255)).numpy()
    expected = _mean([p[:200] for p in trained.test_probs], [0, 0, 2])
    assert np.abs(out - expected).max() < 1e-5


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("onnx", ".onnx")])
def test_exports_reload_and_predict_like_the_module(
    trained: Trained, tmp_path: Path, fmt: str, suffix: str
) -> None:
    out = tmp_path / "nested" / f"ensemble{suffix}"
    example = torch.rand(2, 3, 32, 32)
    assert export(trained.ensemble, fmt, out, example) == out
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    run, classes = load_exported(out)
    assert classes == trained.data.classes
    x = trained.data.test_x[:1000].astype(np.float32) / 255
    with torch.no_grad():
        expected = trained.ensemble(torch.from_numpy(x)).numpy()
    got = run(x)
    assert got.shape == (1000, 10)
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(run(x[:1]) - expected[:1]).max() < 1e-4  # any batch size


def test_predict_classifies_a_folder_of_png_files(trained: Trained, tmp_path: Path) -> None:
    model = export(
        trained.ensemble, "torchscript", tmp_path / "ensemble.pt", torch.rand(2, 3, 32, 32)
    )
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    images = trained.data.test_x[:3]
    names = [folder / "a.png", folder / "b.png", folder / "sub" / "c.png"]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image.transpose(1, 2, 0)).save(name)
    (folder / "notes.txt").write_text("not an image")
    results = predict(str(model), [str(folder)], top=3)
    assert [name for name, _ in results] == [str(n) for n in names]
    with torch.no_grad():
        expected = trained.ensemble(torch.from_numpy(images.astype(np.float32) / 255)).numpy()
    for (_, top), probs in zip(results, expected, strict=True):
        assert len(top) == 3
        assert all(label in trained.data.classes for label, _ in top)
        values = [p for _, p in top]
        assert values == sorted(values, reverse=True) and 0 < values[0] <= 1
        assert top[0][0] == trained.data.classes[int(probs.argmax())]
        assert values[0] == pytest.approx(float(probs.max()), abs=1e-5)
    files, x = read_images([str(names[0])], channels=1, size=16)  # grey and resized
    assert files == [str(names[0])] and x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mlflow_model_directory_loads_for_predict(trained: Trained, tmp_path: Path) -> None:
    import mlflow.pytorch as mlflow_pytorch
    from mlflow.models import infer_signature

    x = trained.data.test_x[:4].astype(np.float32) / 255
    with torch.no_grad():
        expected = trained.ensemble(torch.from_numpy(x)).numpy()
    directory = tmp_path / "mlflow-model"
    mlflow_pytorch.save_model(  # MLflow's default format (pt2); log_ensemble pickles instead
        trained.ensemble,
        str(directory),
        signature=infer_signature(x, expected),
        input_example=x,
        metadata={"classes": trained.ensemble.classes},
    )
    run, classes = load_exported(directory)
    assert classes == trained.data.classes
    assert np.abs(run(x) - expected).max() < 1e-5
    # `sweeper export` of a registered model: the torch.export module MLflow loads back
    graph = mlflow_pytorch.load_model(str(directory))
    exported = export(graph, "torchscript", tmp_path / "m.pt", torch.from_numpy(x))
    run, classes = load_exported(exported)
    assert classes == []  # that module has no class names: predict shows indices
    assert np.abs(run(x) - expected).max() < 1e-4
    assert np.abs(run(x[:1]) - expected[:1]).max() < 1e-4  # its shape checks traced as constants


def test_bad_input_fails_in_one_line(trained: Trained, tmp_path: Path) -> None:
    example = torch.rand(2, 3, 32, 32)
    with pytest.raises(SweeperError) as excinfo:
        export(trained.ensemble, "tflite", tmp_path / "m.tflite", example)
    _one_line_error(excinfo, "tflite", "torchscript, onnx")
    with pytest.raises(SweeperError) as excinfo:
        export(trained.ensemble, "mlflow", tmp_path / "m", example)
    _one_line_error(excinfo, "mlflow")
    with pytest.raises(SweeperError) as excinfo:
        predict(str(tmp_path / "missing.onnx"), [str(tmp_path)])
    _one_line_error(excinfo, "missing.onnx", "does not exist")
    with pytest.raises(SweeperError) as excinfo:
        load_member(tmp_path / "missing.pt")
    _one_line_error(excinfo, "missing.pt")
    (tmp_path / "not-a-checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(SweeperError) as excinfo:
        load_member(tmp_path / "not-a-checkpoint.pt")
    _one_line_error(excinfo, "not-a-checkpoint.pt")
    with pytest.raises(SweeperError) as excinfo:
        load_exported(tmp_path / "not-a-checkpoint.pt")
    _one_line_error(excinfo, "not-a-checkpoint.pt", "TorchScript")

    model = export(trained.ensemble, "torchscript", tmp_path / "ensemble.pt", example)
    with pytest.raises(SweeperError) as excinfo:
        predict(str(model), [str(tmp_path / "nowhere")])
    _one_line_error(excinfo, "nowhere", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SweeperError) as excinfo:
        predict(str(model), [str(empty)])
    _one_line_error(excinfo, "no images", "empty")
    broken = empty / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(SweeperError) as excinfo:
        predict(str(model), [str(empty)])
    _one_line_error(excinfo, "broken.png", "cannot read")
    with pytest.raises(SweeperError) as excinfo:
        predict(str(model), [str(empty)], top=0)
    _one_line_error(excinfo, "top")
    with pytest.raises(SweeperError) as excinfo:
        evaluate(
            [], (trained.data.val_x, trained.data.val_y), (trained.data.test_x, trained.data.test_y)
        )
    _one_line_error(excinfo, "no members")
