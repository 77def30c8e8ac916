"""sweeper.tracking against a real MLflow sqlite store in a temporary sweep directory."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from sweeper.errors import SweeperError
from sweeper.records import Artifact
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.stores.tracking import (
    TrialTracker,
    checkpoint_size,
    delete_checkpoint,
    end_run,
    experiment_for,
    fetch_checkpoint,
    run_config,
    runs,
    start_launch_run,
)
from sweeper.stores.tracking.figures import FigureDrawer
from sweeper.stores.tracking.queries import latest_run, metric_histories, runs_of_study

CLASSES = ["cat", "dog", "ship"]
CONFIG: dict[str, Any] = {
    "model": "cnn",
    "lr": 0.1 + 0.2,  # a float that only round-trips exactly as repr
    "weight_decay": 5e-4,
    "widths": [32, 64, 128],
    "dropout": None,
    "augment": True,
    "epochs": 3,
}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store per module: creating and migrating a sqlite store takes seconds."""
    return tmp_path_factory.mktemp("sweep")


@pytest.fixture(scope="module")
def uri(sweep_dir: Path) -> str:
    return default_tracking_uri(sweep_dir)


def study_of_runs(runs: dict[int, str]) -> optuna.Study:
    """An Optuna study whose finished trials point at these MLflow runs, as a sweep's do."""
    study = optuna.create_study(direction="maximize")
    for number, run_id in runs.items():
        complete = number == 0
        state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED
        attrs = {"mlflow_run_id": run_id}
        trial = optuna.trial.create_trial(state=state, value=0.5 if complete else None,
                                          user_attrs=attrs)  # fmt: skip
        study.add_trial(trial)
    return study


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_acc": 0.3 + 0.1 * e,
            "val_loss": 2.2 / e,
            "val_acc": 0.25 + 0.1 * e,
            "lr": 0.1 / e,
            "seconds": 1.5,
            "images_per_s": 1000.0 * e,
        }
        for e in range(1, epochs + 1)
    ]


def client_metric_steps(uri: str, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_acc")]


def count_log_batch(tracker: TrialTracker) -> list[int]:
    """Count the tracker's log_batch calls to MLflow (the real method still runs)."""
    calls: list[int] = []
    real = tracker.client.raw.log_batch

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    tracker.client.raw.log_batch = counting  # type: ignore[method-assign]
    return calls


def test_experiment_for_gets_or_creates(sweep_dir: Path, uri: str) -> None:
    assert uri == f"sqlite:///{sweep_dir.resolve()}/mlflow.db"
    first = experiment_for(uri, "exp-study", SweepPaths.resolve(sweep_dir).artifact_root)
    assert experiment_for(uri, "exp-study") == first
    other = experiment_for(uri, "exp-other")  # no artifact root: next to the sqlite file
    assert other != first
    client = MlflowClient(tracking_uri=uri)
    for experiment_id in (first, other):
        location = client.get_experiment(experiment_id).artifact_location
        assert Path(location.removeprefix("file://")).is_relative_to(sweep_dir.resolve())
    assert (sweep_dir / "mlflow.db").is_file()
    older = client.create_experiment("exp-older")  # made before sweeper tagged its experiments
    for experiment_id in (first, other, experiment_for(uri, "exp-older")):
        kind = client.get_experiment(experiment_id).tags["mlflow.experimentKind"]
        assert kind == "custom_model_development"  # MLflow 3's model training, not GenAI
    assert experiment_for(uri, "exp-older") == older


def test_launch_with_two_trials(tmp_path: Path, uri: str) -> None:
    study = "two-trials"
    experiment_id = experiment_for(uri, study)
    parent = start_launch_run(uri, experiment_id, study, {"host": "box", "sweeper": "0.1.0"})
    tracker = TrialTracker(uri, experiment_id, parent)
    tags = {"worker": "0", "device": "cpu", "seed": "0", "split_hash": "abc"}
    first = tracker.start(study, 0, CONFIG, tags)
    second = tracker.start(study, 1, {**CONFIG, "lr": 0.01}, {**tags, "worker": "1"})

    calls = count_log_batch(tracker)
    for row in history(3):
        tracker.log_epoch(first, row, row["epoch"])
    # the first epoch at once; the next ones, within SEND_EVERY_S of it, wait for the next write
    assert len(calls) == 1
    assert client_metric_steps(uri, first) == [1]
    tracker.log_epoch(second, history(1)[0], 1)

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    labels = np.array([0, 1, 2, 2, 1, 0])
    predictions = np.array([0, 1, 2, 1, 1, 2])
    tracker.finish(
        first,
        "COMPLETE",
        CLASSES,
        labels,
        predictions,
        checkpoint,
        summary={"best_val_acc": 0.55, "best_epoch": 3},
    )
    tracker.finish(second, "PRUNED", summary={"best_val_acc": 0.35})
    end_run(uri, parent, "FINISHED")

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trial-0"
    assert run.data.params["lr"] == str(0.1 + 0.2)
    assert run.data.params["widths"] == "[32, 64, 128]"
    assert run.data.params["dropout"] == "None"
    assert run.data.tags["mlflow.parentRunId"] == parent
    expected_tags = {"sweeper.kind": "trial", "sweeper.study": study, "sweeper.trial": "0"}
    assert expected_tags.items() <= run.data.tags.items()
    assert tags.items() <= run.data.tags.items()
    assert run.data.tags["optuna.state"] == "COMPLETE"
    assert run.data.metrics["best_val_acc"] == 0.55
    assert "epoch" not in run.data.metrics
    val_acc = client.get_metric_history(first, "val_acc")
    assert [(m.step, m.value) for m in val_acc] == [(e, 0.25 + 0.1 * e) for e in (1, 2, 3)]
    assert len(client.get_metric_history(first, "images_per_s")) == 3
    # the worker logs the counts; the launcher's FigureDrawer draws them, once per run
    counted = client.download_artifacts(first, "plots/confusion_matrix.json", str(tmp_path / "c"))
    confusion = json.loads(Path(counted).read_text())
    assert confusion == {"classes": CLASSES, "counts": [[1, 0, 1], [0, 2, 0], [0, 1, 1]]}
    assert [f.path for f in client.list_artifacts(first, "plots")] == [Artifact.CONFUSION_COUNTS]
    draw = FigureDrawer(uri)
    draw(study_of_runs({0: first, 1: second}))
    draw(study_of_runs({0: first, 1: second}))
    assert sorted(draw.drawn) == sorted([first, second])
    plots = [f.path for f in client.list_artifacts(first, "plots")]
    assert plots == [Artifact.CONFUSION_COUNTS, "plots/confusion_matrix.png"]
    assert [f.path for f in client.list_artifacts(first, "checkpoints")] == ["checkpoints/best.pt"]
    downloaded = client.download_artifacts(first, "checkpoints/best.pt", str(tmp_path / "dl"))
    assert Path(downloaded).read_bytes() == b"weights"

    pruned = client.get_run(second)
    assert pruned.info.status == "FINISHED"
    assert pruned.data.tags["optuna.state"] == "PRUNED"
    assert pruned.data.tags["worker"] == "1"
    assert client.list_artifacts(second, "plots") == []  # no predictions given, no picture

    launch = client.get_run(parent)
    assert launch.info.status == "FINISHED"
    assert launch.data.tags["sweeper.kind"] == "launch"
    assert launch.info.run_name.startswith(f"{study}-launch-")
    assert list(runs_of_study(uri, study)["run_id"]) == [first, second]
    assert runs_of_study(uri, "no-such-study").empty


def test_failed_trial(uri: str) -> None:
    study = "failing"
    experiment_id = experiment_for(uri, study)
    tracker = TrialTracker(uri, experiment_id, None)
    run_id = tracker.start(study, 0, CONFIG, {})
    tracker.finish(run_id, "FAIL", reason="CUDA out of memory " + "x" * 1000)
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["sweeper.fail_reason"].startswith("CUDA out of memory")
    assert len(run.data.tags["sweeper.fail_reason"]) == 500
    assert "mlflow.parentRunId" not in run.data.tags


def test_a_logged_checkpoint_is_named_found_fetched_in_place_and_deleted(
    tmp_path: Path, uri: str
) -> None:
    study = "weights"
    tracker = TrialTracker(uri, experiment_for(uri, study), None)
    run_id = tracker.start(study, 4, CONFIG, {})
    file = tmp_path / "trial-4-best.pt"
    file.write_bytes(b"weights")
    ref = tracker.finish(run_id, "COMPLETE", checkpoint=file)
    assert ref == f"runs:/{run_id}/checkpoints/trial-4-best.pt"
    assert checkpoint_size(uri, ref) == len(b"weights")
    stored = fetch_checkpoint(uri, ref, tmp_path / "downloads")
    assert stored.read_bytes() == b"weights" and stored != file
    assert not (tmp_path / "downloads").exists()  # the embedded store's file itself, no copy
    delete_checkpoint(uri, ref)
    assert checkpoint_size(uri, ref) is None and not stored.exists()
    assert MlflowClient(tracking_uri=uri).list_artifacts(run_id, "checkpoints") == []
    assert checkpoint_size(uri, str(file)) == len(b"weights")  # a local file, where logging failed
    delete_checkpoint(uri, str(file))
    assert not file.exists() and checkpoint_size(uri, str(file)) is None


def test_failing_artifact_still_ends_the_run(tmp_path: Path, uri: str) -> None:
    study = "bad-artifact"
    tracker = TrialTracker(uri, experiment_for(uri, study), None)
    run_id = tracker.start(study, 0, CONFIG, {})
    missing = tmp_path / "never-written.pt"
    assert tracker.finish(run_id, "COMPLETE", checkpoint=missing) is None
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.list_artifacts(run_id, "checkpoints") == []


def test_run_config_round_trips(uri: str) -> None:
    study = "config"
    experiment_id = experiment_for(uri, study)
    run_id = TrialTracker(uri, experiment_id, None).start(study, 0, CONFIG, {})
    assert run_config(uri, run_id) == CONFIG

    with pytest.raises(SweeperError) as error:
        run_config(uri, "0123456789abcdef0123456789abcdef")
    assert str(error.value) == f"--from-run: no run 0123456789abcdef0123456789abcdef in {uri}"
    assert "\n" not in str(error.value)

    launch = start_launch_run(uri, experiment_id, study, {})
    with pytest.raises(SweeperError, match="has no config.json"):
        run_config(uri, launch)


def test_reopened_run_keeps_one_run(uri: str) -> None:
    study = "retry"
    experiment_id = experiment_for(uri, study)
    tracker = TrialTracker(uri, experiment_id, None)
    run_id = tracker.start(study, 4, CONFIG, {"worker": "0"})
    for row in history(2):
        tracker.log_epoch(run_id, row, row["epoch"])
    tracker.finish(run_id, "FAIL", reason="worker died")

    again = tracker.start(study, 9, {**CONFIG, "lr": 1.0}, {"worker": "3"}, run_id=run_id)
    assert again == run_id
    assert tracker.logged_epochs(run_id) == {1, 2}
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["sweeper.trial"] == "9"
    assert run.data.tags["sweeper.retry_of"] == "4"
    assert run.data.tags["optuna.state"] == "RUNNING"
    assert run.data.tags["worker"] == "3"
    assert run.data.params["lr"] == str(0.1 + 0.2)  # params are not logged again

    for row in history(3)[2:]:
        tracker.log_epoch(run_id, row, row["epoch"])
    tracker.finish(run_id, "COMPLETE")
    assert tracker.logged_epochs(run_id) == {1, 2, 3}
    assert client.get_run(run_id).info.status == "FINISHED"
    assert list(runs_of_study(uri, study)["run_id"]) == [run_id]


def test_log_epoch_cost(uri: str) -> None:
    study = "cost"
    tracker = TrialTracker(uri, experiment_for(uri, study), None)
    run_id = tracker.start(study, 0, CONFIG, {})
    row = history(1)[0]
    calls = count_log_batch(tracker)
    started = time.perf_counter()
    for epoch in range(1, 21):
        tracker.log_epoch(run_id, row, epoch)
    mean_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"\nlog_epoch: {mean_ms:.1f} ms mean over 20 calls ({len(row) - 1} metrics each)")
    assert len(calls) == 1  # the first; the others are buffered
    tracker.finish(run_id, "COMPLETE", summary={"best_val_acc": 0.5})
    assert len(calls) == 2  # the 19 epochs and the summary in one call
    assert tracker.logged_epochs(run_id) == set(range(1, 21))


def test_slow_epochs_are_sent_as_they_end(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs further apart than SEND_EVERY_S show in the UI as soon as they end."""
    monkeypatch.setattr(runs, "SEND_EVERY_S", 0.0)
    tracker = TrialTracker(uri, experiment_for(uri, "slow"), None)
    run_id = tracker.start("slow", 0, CONFIG, {})
    calls = count_log_batch(tracker)
    for row in history(3):
        tracker.log_epoch(run_id, row, row["epoch"])
        assert tracker.logged_epochs(run_id) == set(range(1, row["epoch"] + 1))
    assert len(calls) == 3


def test_queries_return_frames(uri: str) -> None:
    study = "queries"
    experiment_id = experiment_for(uri, study)
    assert latest_run(uri, study, "launch") is None
    parent = start_launch_run(uri, experiment_id, study, {})
    tracker = TrialTracker(uri, experiment_id, parent)
    second = tracker.start(study, 1, CONFIG, {"sweeper.device": "cpu"})
    first = tracker.start(study, 0, CONFIG, {"sweeper.device": "cuda:0"})
    for row in history(2):
        tracker.log_epoch(first, row, row["epoch"])
    tracker.log_epoch(first, {"val_acc": 0.9}, 2)  # a step logged again keeps its last value
    tracker.finish(first, "COMPLETE", summary={"best_val_acc": 0.9})

    runs = runs_of_study(uri, study)
    assert list(runs["run_id"]) == [first, second]  # in trial-number order
    assert list(runs["tags.sweeper.trial"]) == ["0", "1"]
    assert list(runs["tags.sweeper.device"]) == ["cuda:0", "cpu"]
    assert list(runs["status"]) == ["FINISHED", "RUNNING"]
    assert runs["params.lr"].iloc[0] == str(CONFIG["lr"])
    assert runs["metrics.best_val_acc"].iloc[0] == 0.9 and np.isnan(runs["metrics.best_val_acc"][1])
    assert set(runs["experiment_id"]) == {experiment_id}

    launch = latest_run(uri, study, "launch")
    assert launch is not None
    assert launch["run_id"] == parent and launch["status"] == "RUNNING"
    assert launch["tags.sweeper.kind"] == "launch"

    curves = metric_histories(uri, [first, second], ["val_acc", "seconds"])
    assert list(curves.columns) == ["run_id", "key", "step", "value"]
    val_acc = curves[curves["key"] == "val_acc"]
    assert list(zip(val_acc["step"], val_acc["value"], strict=True)) == [(1, 0.35), (2, 0.9)]
    assert list(curves[curves["key"] == "seconds"]["step"]) == [1, 2]
    assert set(curves["run_id"]) == {first}  # the second run logged nothing yet


def test_a_new_embedded_store_is_a_copy_of_the_migrated_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    experiment_for(default_tracking_uri(tmp_path / "a"), "first")  # migrates the template
    template = tmp_path / "cache" / "stores" / f"mlflow-{mlflow.__version__}.db"
    assert template.is_file()
    rows = "SELECT * FROM experiments"
    template_rows = sqlite3.connect(template).execute(rows).fetchall()

    uri = default_tracking_uri(tmp_path / "b")
    experiment_id = experiment_for(uri, "second")
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files in (["mlflow.db"], ["mlflow.db", "mlflow.db-shm", "mlflow.db-wal"])  # no copy
    client = MlflowClient(tracking_uri=uri)
    default = client.get_experiment("0")
    assert default.artifact_location == str(tmp_path / "b" / "artifacts" / "0")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "val_acc", 0.5, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}
    # the template itself stays empty: the next new store starts from the same tables
    assert sqlite3.connect(template).execute(rows).fetchall() == template_rows
    assert [e.name for e in client.search_experiments()] == ["second", "Default"]


def test_the_figure_drawer_keeps_polls_short_and_draws_the_best_trials_only(uri: str) -> None:
    """Trials finishing faster than figures draw: each poll draws for its time budget (at least
    one figure), best first, and only the best `top` trials ever get one."""
    study_name = "many-figures"
    experiment_id = experiment_for(uri, study_name)
    tracker = TrialTracker(uri, experiment_id, None)
    labels = np.array([0, 1, 2])
    runs = {}
    for number in range(5):
        runs[number] = tracker.start(study_name, number, CONFIG, {})
        tracker.finish(runs[number], "COMPLETE", classes=CLASSES, val_labels=labels,
                       val_predictions=labels, summary={"best_val_acc": 0.5})  # fmt: skip
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate([0.3, 0.9, 0.1, 0.7, 0.5]):
        study.add_trial(optuna.trial.create_trial(
            value=value, user_attrs={"mlflow_run_id": runs[number]}))  # fmt: skip
    draw = FigureDrawer(uri, budget_s=0.0, top=3)
    draw(study)
    assert draw.drawn == {runs[1]}  # one figure a poll: the best trial's
    draw(study, final=True)
    assert draw.drawn == {runs[1], runs[3], runs[4]}  # the best 3, no more
    client = MlflowClient(tracking_uri=uri)
    pictures = {
        n
        for n, run in runs.items()
        if "plots/confusion_matrix.png" in {f.path for f in client.list_artifacts(run, "plots")}
    }
    assert pictures == {1, 3, 4}
