"""End to end: real sweeps of studies/quickstart.py, over SQLite and PostgreSQL (the `store`
fixture), with a real MLflow store: what a finished launch holds, its summary and ensemble, early
stops and warm starts. Resuming, interrupts and dead workers: test_resume.py."""

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import (
    FINISHED,
    QUICKSTART,
    SMALL,
    Store,
    launch,
    sweeper_here,
)
from mlflow import MlflowClient

from sweeper.ensemble.export import load_exported
from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.sweep.retention import top_trials
from sweeper.training.loop import cpu_has_native_bf16

BF16 = str(cpu_has_native_bf16())


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path, store: Callable[[Path], Store]
) -> tuple[Path, Store]:
    """A finished sweep of 4 trials on 2 workers; the tests that take it only read it."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    storage = store(sweep_dir)
    done = launch(sweep_dir, storage, datasets_dir, "--trials", "4", "--workers", "2", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, storage


def test_every_trial_finishes_and_has_one_run(swept: tuple[Path, Store]) -> None:
    sweep_dir, storage = swept
    trials = storage.load().get_trials()
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= set(FINISHED)
    uri = default_tracking_uri(sweep_dir)
    runs = tracking.runs_of_study(uri, "quickstart")
    assert len(runs) == 4
    client = MlflowClient(tracking_uri=uri)
    by_id = runs.set_index("run_id")
    top = {t.number for t in top_trials(storage.load(), 3)}  # whose best weights the launch kept
    for trial in trials:
        run = by_id.loc[trial.user_attrs["mlflow_run_id"]]  # trial -> run
        assert run["tags.sweeper.trial"] == str(trial.number)  # run -> trial
        assert run["tags.optuna.state"] == trial.state.name
        assert run["status"] == "FINISHED"
        assert run["tags.mlflow.parentRunId"]
        for key in ("sweeper.worker", "sweeper.device", "sweeper.host", "sweeper.split_hash"):
            assert run[f"tags.{key}"]
        assert float(run["params.lr"]) == trial.params["lr"]
        assert run["params.model"] == trial.user_attrs["config"]["model"] == "cnn2"
        # what the run used, not "auto"
        assert (run["params.bf16"], run["params.channels_last"]) == (BF16, "True")
        run_id = trial.user_attrs["mlflow_run_id"]
        epochs = trial.user_attrs["epochs_run"]
        steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
        assert sorted(steps) == list(range(1, epochs + 1))
        for key in ("train_loss", "train_acc", "val_loss", "lr", "seconds", "images_per_s"):
            assert len(client.get_metric_history(run_id, key)) == epochs
        pace = trial.user_attrs["pace"]  # for the launcher's bar: at last, the first epoch's
        first = {k: min(client.get_metric_history(run_id, k), key=lambda m: m.step).value
                 for k in ("images_per_s", "seconds")}  # fmt: skip
        assert pace["device"] == "cpu"
        assert pace["images_per_s"] == pytest.approx(first["images_per_s"])
        assert pace["epoch_s"] == pytest.approx(first["seconds"])
        paths = {a.path for a in client.list_artifacts(run_id, "plots")}
        assert paths == {"plots/confusion_matrix.json", "plots/confusion_matrix.png"}
        assert bool(client.list_artifacts(run_id, "checkpoints")) == (trial.number in top)
    assert set(runs["tags.sweeper.worker"]) == {"w0", "w1"}


def test_status_lists_trials_best_first(swept: tuple[Path, Store]) -> None:
    sweep_dir, storage = swept
    done = sweeper_here("status", "quickstart", "--dir", str(sweep_dir), *storage.flags, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 4
    values = [row["value"] for row in rows if row["value"] is not None]
    assert values == sorted(values, reverse=True)
    by_file = sweeper_here("status", QUICKSTART, "--dir", str(sweep_dir), *storage.flags, "--csv")
    assert by_file.stdout.startswith("trial,state,value")


def test_train_from_run_repeats_a_trial(swept: tuple[Path, Store], datasets_dir: Path) -> None:
    sweep_dir, storage = swept
    trial = storage.load().best_trial
    run_id = trial.user_attrs["mlflow_run_id"]
    done = sweeper_here(
        "train", "--from-run", run_id, "--dir", str(sweep_dir), "--epochs", "1", "--json",
        "--data-dir", str(datasets_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["config"]["model"] == trial.user_attrs["config"]["model"]
    assert report["config"]["lr"] == trial.params["lr"]
    assert report["config"]["train_size"] == 1000


def test_a_launch_ends_with_its_ensemble_exported_a_report_and_a_summary(
    tmp_path: Path, datasets_dir: Path
) -> None:
    storage = Store("sqlite", f"sqlite:///{tmp_path / 'optuna.db'}", ())
    done = launch(tmp_path, storage, datasets_dir, "--trials", "2", "--workers", "2",
                  "--epochs", "1", "--train-size", "500",
                  "--val-size", "500", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("sweeper: quickstart done in") :].splitlines()
    best = storage.load().best_trial
    assert summary[1] == (
        f"  best trial {best.number}: val_acc {best.value:.2%}"
        " (document 003's hand-tuned CNN: 66.57%)"
    )
    assert summary[2].startswith("  ensemble of 4 members: test accuracy ")  # 2 configs x 2 seeds
    members = storage.load("quickstart.ensemble").trials  # every member stored its weights
    assert all("checkpoint" in t.user_attrs for t in members), [t.user_attrs for t in members]
    exports = [tmp_path / "exports" / "quickstart" / f"ensemble-v1{s}" for s in (".pt", ".onnx")]
    assert summary[3] == f"  exported: {exports[0]} and {exports[1]}"
    images = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    (torchscript, _), (onnx, classes) = (load_exported(path) for path in exports)
    assert np.abs(torchscript(images) - onnx(images)).max() < 1e-4 and len(classes) == 10
    report = tmp_path / "reports" / "quickstart-evaluation.html"
    assert summary[4] == f"  report: {report}" and report.stat().st_size > 10_000
    assert summary[5] == f"  MLflow UI: sweeper ui --dir {tmp_path}"
    assert "INFO mlflow" not in done.stderr and "Traceback" not in done.stderr
    assert summary[6].startswith("  disk: freed ")
    members = storage.load("quickstart.ensemble").trials
    uri = default_tracking_uri(tmp_path)
    assert all(tracking.checkpoint_size(uri, t.user_attrs["checkpoint"]) for t in members)
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # the runs hold the one copy


STALLING = """
import optuna
from sweeper.spec.study import Study


def space(trial):
    trial.suggest_float("unused", 0, 1)  # every trial trains the same config: none beats the first
    return {"model": "cnn2", "optimizer": "adam", "lr": 1e-3}


study = Study(
    name="stalling", space=space, fixed={"dataset": "cifar10", "val_size": 500},
    trials=20, epochs=1, patience=None, stop_after=2, min_delta=0.01,
    sampler=optuna.samplers.RandomSampler(seed=7), pruner=optuna.pruners.NopPruner(),
)
"""


def test_a_study_that_stops_improving_ends_early_and_says_why(
    tmp_path: Path, datasets_dir: Path
) -> None:
    study_file = tmp_path / "stalling.py"
    study_file.write_text(STALLING)
    done = sweeper_here("launch", str(study_file), "--dir", str(tmp_path), "--data-dir",
                        str(datasets_dir), "--workers", "1", "--train-size", "500",
                        "--val-size", "500", "--no-progress",
                        "--no-ensemble")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trials = optuna.load_study(study_name="stalling", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # the best, then 2 that did not help
    assert {t.user_attrs["sampler"] for t in trials} == {"RandomSampler"}
    why = "stop_after: 2 finished trials in a row did not raise the best value"
    assert f"sweeper: the sweep stops early: {why}" in done.stdout
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("stalling").experiment_id
    (launch_run,) = client.search_runs([experiment], "tags.`sweeper.kind` = 'launch'")
    assert launch_run.data.tags["sweeper.stopped_because"].startswith(why)


WARM = """
from sweeper.spec.study import Study


def space(trial):
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    values = {{"model": "cnn2", "optimizer": optimizer, "lr": trial.suggest_float("lr", 1e-3, 0.1)}}
    {momentum}
    return values


study = Study(name="{name}", space=space, fixed={{"dataset": "cifar10", "val_size": 500}},
              trials={trials}, epochs=1, patience=None, sampler="random", pruner="none",
              warm_start={warm}, warm_top=2)
"""


def test_a_new_study_trains_the_best_configs_of_an_earlier_one_and_a_csv_first(
    tmp_path: Path, datasets_dir: Path
) -> None:
    def run(name: str, trials: int, warm: list[str], momentum: bool) -> subprocess.CompletedProcess:
        extra = 'values["momentum"] = trial.suggest_float("momentum", 0.5, 0.9)' if momentum else ""
        study_file = tmp_path / f"{name}.py"
        study_file.write_text(WARM.format(name=name, trials=trials, warm=warm, momentum=extra))
        return sweeper_here("launch", str(study_file), "--dir", str(tmp_path), "--data-dir",
                            str(datasets_dir), "--workers", "1", "--train-size", "500",
                            "--val-size", "500",
                            "--no-progress", "--no-ensemble")  # fmt: skip

    assert run("first", 3, [], momentum=True).returncode == 0
    missing = run("other", 1, ["nothing-here"], momentum=False)
    assert missing.returncode == 2 and "no study 'nothing-here'" in missing.stderr
    (tmp_path / "configs.csv").write_text("optimizer,lr\nadam,0.005\nsgd,0.5\n")
    done = run("second", 4, ["first", "configs.csv"], momentum=False)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = optuna.load_study(study_name="first", storage=storage)
    top = sorted(first.trials, key=lambda t: t.value, reverse=True)[:2]
    second = optuna.load_study(study_name="second", storage=storage).trials
    lines = [line for line in done.stdout.splitlines() if line.startswith("warm start:")]
    assert lines[0] == "warm start: 4 configs from first, configs.csv queued first"
    assert lines[1].startswith("warm start: momentum left out, the new space draws it: first trial")
    assert lines[1].endswith("is not a parameter of the new space (and 1 more configs)")
    assert lines[2].startswith(
        "warm start: lr left out, the new space draws it: configs.csv row 2:"
    )
    for trial, source in zip(second[:2], top, strict=True):
        assert trial.params == {k: v for k, v in source.params.items() if k != "momentum"}
        assert trial.user_attrs["warm_start"] == f"first trial {source.number}"
    assert second[2].params == {"optimizer": "adam", "lr": 0.005}
    assert second[3].params["optimizer"] == "sgd" and 1e-3 <= second[3].params["lr"] <= 0.1
