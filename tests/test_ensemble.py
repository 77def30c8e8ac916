"""Ensembles of really trained members: the math, the module, the exports and `predict`."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sweeper_here
from PIL import Image

from sweeper.ensemble.evaluate import (
    Ensemble,
    EnsembleReport,
    evaluate,
    greedy_selection,
    load_member,
    probabilities,
)
from sweeper.ensemble.export import export, load_exported, predict, read_images
from sweeper.errors import SweeperError
from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.stores.tracking.model import MODEL_CODE
from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData
from sweeper.training.loop import train
from sweeper.worker.checkpoints import save_best

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


# what an MLflow model directory of the ensemble may hold: no pickle, code only sweeper's own
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "model_code.py",
    "input_example.json",
    "serving_input_example.json",
    "artifacts/ensemble/ensemble.json",
    "artifacts/ensemble/weights.safetensors",
}


def test_mlflow_model_directory_holds_no_pickle_and_loads(trained: Trained, tmp_path: Path) -> None:
    import mlflow.pyfunc
    import yaml

    x = trained.data.test_x[:200].astype(np.float32) / 255
    with torch.no_grad():
        expected = trained.ensemble(torch.from_numpy(x)).numpy()
    directory = tracking.save_model(trained.ensemble, tmp_path / "mlflow-model", x[:4])
    files = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    code = {f for f in files if f.startswith("code/sweeper/")}
    assert files - code == MODEL_FILES
    assert code and all(f.endswith(".py") for f in code)  # no __pycache__ either
    flavors = yaml.safe_load((directory / "MLmodel").read_text())["flavors"]
    assert list(flavors) == ["python_function"]
    assert flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (directory / "model_code.py").read_bytes() == MODEL_CODE.read_bytes()
    # sweeper reads it with its own code, exactly
    run, classes = load_exported(directory)
    assert classes == trained.data.classes
    assert np.abs(run(x) - expected).max() < 1e-6
    rebuilt = tracking.read_model(directory)
    assert rebuilt.options == trained.ensemble.options and rebuilt.input_shape == (3, 32)
    # MLflow's own loader runs the stored model_code.py (models from code), unpickles nothing
    model = mlflow.pyfunc.load_model(str(directory))
    assert np.abs(model.predict(x) - expected).max() < 1e-6


class _RunsCode:
    """A pickle that, when loaded, creates `marker`: code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _payload(marker: Path) -> bytes:
    """The pickle of _RunsCode, proven live: loading it once does create the marker."""
    payload = pickle.dumps(_RunsCode(marker))
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    return payload


def test_tampered_weights_are_refused_without_running_code(
    trained: Trained, tmp_path: Path
) -> None:
    directory = tracking.save_model(trained.ensemble, tmp_path / "model", np.zeros((2, 3, 32, 32)))
    marker = tmp_path / "code-ran"
    weights = directory / "artifacts" / "ensemble" / "weights.safetensors"
    image = tmp_path / "cat.png"
    Image.fromarray(trained.data.test_x[0].transpose(1, 2, 0)).save(image)
    # the stored code is MLflow's to run, never sweeper's: predict works and runs none of it
    for code in (directory / "model_code.py", *directory.glob("code/sweeper/**/*.py")):
        code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert len(predict(str(directory), [str(image)])) == 1
    assert not marker.exists()
    config = directory / "artifacts" / "ensemble" / "ensemble.json"
    saved = config.read_text()
    config.write_text(saved.replace('"cnn2"', '"cnn3"'))
    with pytest.raises(SweeperError) as excinfo:
        predict(str(directory), [str(image)])
    _one_line_error(excinfo, "predict:", "does not rebuild", "cnn3")
    config.write_text(saved)
    weights.write_bytes(_payload(marker))  # a plain pickle
    with pytest.raises(SweeperError) as excinfo:
        predict(str(directory), [str(image)])
    _one_line_error(excinfo, "weights.safetensors", "cannot read")
    assert not marker.exists()
    torch.save({"model": _RunsCode(marker)}, weights)  # a torch.save zip with the pickle inside
    done = sweeper_here("predict", str(directory), str(image))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "weights.safetensors" in done.stderr and not marker.exists()


def test_export_refuses_a_tampered_or_pickled_registered_model(
    trained: Trained, tmp_path: Path
) -> None:
    """`sweeper export` of a registered ensemble: fine as stored; refused in one line, running
    nothing, once its weights are a pickle or when an older sweeper registered it pickled."""
    import mlflow.pytorch
    from mlflow import MlflowClient

    sweep, name, marker = tmp_path / "sweep", "shared", tmp_path / "code-ran"
    uri = default_tracking_uri(sweep)
    experiment = tracking.experiment_for(uri, name)
    logged = tracking.log_ensemble(uri, experiment, None, name, report=trained.report,
                                 member_runs=[], model=trained.ensemble,
                                 example=trained.data.test_x[:4])  # fmt: skip
    client = MlflowClient(uri)
    run = client.create_run(experiment).info
    mlflow.pytorch.save_model(trained.ensemble, tmp_path / "old", serialization_format="pickle")
    (tmp_path / "old" / "data" / "model.pth").write_bytes(_payload(marker))
    client.log_artifacts(run.run_id, str(tmp_path / "old"), "ensemble")
    old = client.create_model_version(name, f"{run.artifact_uri}/ensemble", run.run_id)
    client.set_registered_model_alias(name, "old", old.version)

    out = tmp_path / "mlflow-export"
    assert sweeper_here("export", name, "--dir", str(sweep), "--format", "mlflow",
                   "--out", str(out)).returncode == 0  # fmt: skip
    assert load_exported(out)[1] == trained.data.classes
    done = sweeper_here("export", name, "--dir", str(sweep), "--alias", "old", "--format", "onnx",
                   "--out", str(tmp_path / "old.onnx"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert f"sweeper ensemble {name}" in done.stderr and "older sweeper" in done.stderr
    stored = list(sweep.rglob("weights.safetensors"))
    assert len(stored) == 1 and logged.version == "1"
    torch.save({"model": _RunsCode(marker)}, stored[0])
    for fmt in ("torchscript", "mlflow"):
        done = sweeper_here("export", name, "--dir", str(sweep), "--format", fmt,
                       "--out", str(tmp_path / f"tampered-{fmt}"))  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert "weights.safetensors" in done.stderr
    assert not marker.exists() and not list(tmp_path.glob("tampered-*"))


def test_pickled_model_of_an_older_sweeper_is_refused(trained: Trained, tmp_path: Path) -> None:
    import mlflow.pytorch

    old = tmp_path / "old"
    mlflow.pytorch.save_model(trained.ensemble, str(old), serialization_format="pickle")
    marker = tmp_path / "code-ran"
    (old / "data" / "model.pth").write_bytes(_payload(marker))
    with pytest.raises(SweeperError) as excinfo:
        load_exported(old)
    _one_line_error(excinfo, "older sweeper", "sweeper ensemble")
    assert not marker.exists()


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
