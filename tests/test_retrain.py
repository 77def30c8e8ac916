"""The best-of seed ensemble end to end: a scaled-down sweep, members, registry, exports."""

from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import QUICKSTART, sweeper_here
from mlflow import MlflowClient

from sweeper.ensemble.export import load_exported
from sweeper.ensemble.plan import make_plan
from sweeper.errors import SweeperError
from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.stores.storage import make_storage
from sweeper.training.data import load_images

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    sweep_dir = tmp_path_factory.mktemp("ensemble")
    launched = sweeper_here(
        "launch", QUICKSTART, "--dir", str(sweep_dir), "--trials", "3", "--workers", "2",
        "--epochs", "2", "--train-size", "1000",
        "--val-size", "500", "--no-progress", "--no-ensemble",
        "--data-dir", str(datasets_dir),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    built = sweeper_here(
        "ensemble", QUICKSTART, "--dir", str(sweep_dir), "--k", "2", "--seeds", "2",
        "--workers", "2", "--greedy", "--no-progress", "--data-dir", str(datasets_dir),
        "--train-size", "1000", "--val-size", "500",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "ensemble on the test split" in built.stdout
    return sweep_dir


def test_members_are_tracked_runs_linked_to_their_source(sweep: Path) -> None:
    storage = make_storage(f"sqlite:///{sweep / 'optuna.db'}")
    members = optuna.load_study(study_name="quickstart.ensemble", storage=storage)
    trials = members.get_trials()
    swept = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted((t.params["source_trial"], t.params["seed"]) for t in trials) == sorted(
        {(s, seed) for s in {t.params["source_trial"] for t in trials} for seed in (0, 1)}
    )
    client = MlflowClient(tracking_uri=default_tracking_uri(sweep))
    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["sweeper.source_trial"] == str(trial.params["source_trial"])
        assert run.data.params["seed"] == str(trial.params["seed"])
        assert trial.user_attrs["config"]["epochs"] == 2  # the sources' budget: launch --epochs 2
        # The sweep trained seed 0 of each config: that trial and its run are the member.
        as_trained = trial.params["seed"] == 0
        assert run.data.tags["sweeper.kind"] == ("trial" if as_trained else "ensemble_member")
        source_trial, seed = trial.params["source_trial"], trial.params["seed"]
        member = f"member-of-trial-{source_trial}-seed-{seed}"
        assert run.info.run_name == (f"trial-{source_trial}" if as_trained else member)
        source = swept[trial.params["source_trial"]]
        assert (run.info.run_id == source.user_attrs["mlflow_run_id"]) is as_trained
    # the sweep's own runs stay the trials'
    assert len(tracking.runs_of_study(default_tracking_uri(sweep), "quickstart")) == 3


def test_ensemble_run_is_logged_and_registered_as_champion(sweep: Path) -> None:
    client = MlflowClient(tracking_uri=default_tracking_uri(sweep))
    version = client.get_model_version_by_alias("quickstart", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["sweeper.kind"] == "ensemble"
    metrics = run.data.metrics
    for key in ("ensemble_test_acc", "best_member_test_acc", "gain_over_best_member",
                "greedy_test_acc"):  # fmt: skip
        assert key in metrics
    assert metrics["gain_over_best_member"] == pytest.approx(
        metrics["ensemble_test_acc"] - metrics["best_member_test_acc"]
    )
    assert len(run.data.params["member_run_ids"].split(",")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ensemble_members.json", "members.json", "ensemble"} <= artifacts  # ensemble: the model


@pytest.mark.parametrize(
    ("fmt", "name"), [("torchscript", "ens.pt"), ("onnx", "ens.onnx"), ("mlflow", "ens-mlflow")]
)
def test_exports_match_the_registered_ensemble(
    sweep: Path, datasets_dir: Path, tmp_path: Path, fmt: str, name: str
) -> None:
    out = tmp_path / name
    done = sweeper_here("export", "quickstart", "--dir", str(sweep), "--format", fmt, "--out",
                        str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    model = tracking.load_registered(default_tracking_uri(sweep), "quickstart")
    images = load_images("cifar10", str(datasets_dir)).test_x[:1000].astype(np.float32) / 255
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    predict, classes = load_exported(out)
    got = predict(images)
    assert classes[0] == "airplane" and len(classes) == 10
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_predict_prints_class_names(sweep: Path, datasets_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "ens.onnx"
    assert sweeper_here("export", "quickstart", "--dir", str(sweep), "--format", "onnx", "--out",
                   str(out)).returncode == 0  # fmt: skip
    images = load_images("cifar10", str(datasets_dir)).test_x[:2]
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / f"img{i}.png")
    done = sweeper_here("predict", str(out), str(tmp_path / "img0.png"), str(tmp_path / "img1.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split(": ")[1].split()[0] in CIFAR10 for line in lines)


def test_missing_study_is_one_line(tmp_path: Path) -> None:
    done = sweeper_here("ensemble", "nosuchstudy", "--dir", str(tmp_path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no study 'nosuchstudy'" in done.stderr


def test_the_ensemble_of_a_study_scored_on_cost_comes_from_its_front_within_the_pick() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "params"])
    scores = [(0.70, 900_000), (0.695, 60_000), (0.69, 30_000), (0.64, 10_000), (0.68, 500_000)]
    for number, (acc, params) in enumerate(scores):
        study.add_trial(optuna.trial.create_trial(
            values=[acc, params], params={"n": number},
            distributions={"n": optuna.distributions.IntDistribution(0, 10)},
            user_attrs={"config": {"model": "cnn2", "n": number}},
        ))  # fmt: skip
    # within 1 point of 70%: trials 0, 1, 2, 4; of those on the front: 0, 1, 2 (4 is dominated)
    plan = make_plan(study, k=2, seeds=2, pick="smallest within 1.0")
    assert plan.sources == [0, 1]  # the best two of them by accuracy
    assert make_plan(study, k=5, seeds=1, pick="smallest within 0.6").sources == [0, 1]
    assert make_plan(study, k=5, seeds=1).sources == [0, 1, 2, 4, 3]  # no rule: all, by accuracy
    with pytest.raises(SweeperError, match="needs a study scored on latency_ms"):
        make_plan(study, k=2, seeds=2, pick="fastest within 1.0")
