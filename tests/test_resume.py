"""End to end: a launch resumes what it did not finish, over SQLite and PostgreSQL (the `store`
fixture): launched again, interrupted by a library's error, a worker killed, a launcher that
fails before it hands over, a launch without its data. Ctrl-C: test_resume_ctrl_c.py."""

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers import (
    FINISHED,
    QUICKSTART,
    SMALL,
    TINY,
    Store,
    first_epoch_checkpoint,
    launch,
    processes_mentioning,
    start_launch,
    sweeper,
    sweeper_here,
    workers_of,
)
from mlflow import MlflowClient

from sweeper import interrupt
from sweeper.spec.study import load_study
from sweeper.stores import tracking
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.worker import objective as trial_module
from sweeper.worker.loop import run_worker


def test_launching_again_resumes_without_rerunning(
    tmp_path: Path, datasets_dir: Path, store: Callable[[Path], Store]
) -> None:
    storage = store(tmp_path)
    first = launch(tmp_path, storage, datasets_dir, "--trials", "2", "--workers", "1", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {t.number: t.datetime_complete for t in storage.load().get_trials()}
    again = launch(tmp_path, storage, datasets_dir, "--trials", "2", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {t.number: t.datetime_complete for t in storage.load().get_trials()} == before
    more = launch(tmp_path, storage, datasets_dir, "--trials", "3", *TINY)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(storage.load().get_trials()) == 3


def worker_here(paths: SweepPaths, datasets_dir: Path, epochs: int) -> int:
    """A worker of 2 quickstart trials in this process; the signal handlers it sets put back."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        overrides = {"epochs": epochs, "train_size": 500, "data_dir": str(datasets_dir)}
        return run_worker(load_study(QUICKSTART), paths, device="cpu", worker="w0",
                          experiment_id=None, parent_run_id=None, budget=2, deadline=None,
                          overrides=overrides)  # fmt: skip
    finally:
        interrupt.STOPPING.clear()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def test_a_killed_worker_loses_no_trial(
    tmp_path: Path, datasets_dir: Path, store: Callable[[Path], Store]
) -> None:
    storage = store(tmp_path)
    env = {**os.environ, "SWEEPER_HEARTBEAT_S": "1", "SWEEPER_GRACE_S": "4"}
    launcher = start_launch(tmp_path, storage, datasets_dir, "--trials", "3", env=env)
    killed_trial = first_epoch_checkpoint(tmp_path, launcher)
    (worker,) = workers_of(launcher.pid)
    os.kill(worker, signal.SIGKILL)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    trials = storage.load().get_trials()
    assert len([t for t in trials if t.state.name in FINISHED]) == 3
    (failed,) = [t for t in trials if t.state.name == "FAIL"]
    assert failed.number == killed_trial
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert retry.state.name in FINISHED
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.params == failed.params
    assert retry.user_attrs["mlflow_run_id"] == failed.user_attrs["mlflow_run_id"]
    runs = tracking.runs_of_study(default_tracking_uri(tmp_path), "quickstart")
    assert len(runs) == 3  # the retry continued the killed trial's run


def test_a_trial_cut_before_it_trains_is_queued_again(
    tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a worker opens a new trial (its data, its MLflow run): the trial is still
    interrupted, not failed, and its retry is queued."""
    paths = SweepPaths.resolve(tmp_path)
    optuna.create_study(study_name="quickstart", storage=paths.storage_url, direction="maximize")

    def interrupted(config: object) -> None:
        interrupt.STOPPING.set()  # what the signal handler does before it raises
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_module, "split_of", interrupted)
    assert worker_here(paths, datasets_dir, epochs=1) == 130
    cut, waiting = optuna.load_study(study_name="quickstart", storage=paths.storage_url).trials
    assert (cut.state.name, waiting.state.name) == ("FAIL", "WAITING")
    assert cut.user_attrs["interrupted"] and waiting.system_attrs["failed_trial"] == cut.number
    assert waiting.params == cut.params


@pytest.mark.parametrize("broken", ["mlflow experiment", "optuna study"])
def test_a_launcher_whose_setup_fails_stops_its_early_workers(
    tmp_path: Path, datasets_dir: Path, broken: str, store: Callable[[Path], Store]
) -> None:
    """Workers start while the launcher opens the study and the MLflow run; if that fails, none
    stays."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    storage = store(sweep_dir)
    if broken == "mlflow experiment":
        uri = default_tracking_uri(sweep_dir)
        MlflowClient(uri).delete_experiment(tracking.experiment_for(uri, "quickstart"))
        expected = ["MLflow experiment 'quickstart'", "is deleted"]
    else:
        optuna.create_study(study_name="quickstart", direction="minimize", storage=storage.url)
        expected = [
            "quickstart.py: objectives ['val_acc'] need directions ['maximize'], but",
            "rename the study",
        ]
    done = launch(sweep_dir, storage, datasets_dir, "--workers", "2", *SMALL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert all(text in done.stderr for text in expected), done.stderr
    assert storage.load().trials == []
    assert processes_mentioning(str(sweep_dir)) == []


def test_a_launch_without_its_data_fails_before_it_stores_anything(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    done = sweeper_here("launch", QUICKSTART, "--dir", str(tmp_path / "sweep"), "--data-dir",
                        str(empty), *SMALL)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"sweeper: error: dataset: cifar10 is not in {empty}")
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def test_a_worker_whose_launcher_died_before_handing_over_says_so(tmp_path: Path) -> None:
    done = sweeper(
        "worker", QUICKSTART, "--dir", str(tmp_path / "sweep"), "--from-launcher",
        stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "sweeper: error: the launcher stopped before it handed over the MLflow launch run"
    )


def test_an_interrupt_a_library_turned_into_another_error_still_resumes(
    tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save cut by SIGTERM may raise RuntimeError, which Optuna would catch as a failed
    trial: the worker must still stop and queue the trial's retry, not train on."""
    paths = SweepPaths.resolve(tmp_path)
    optuna.create_study(study_name="quickstart", storage=paths.storage_url, direction="maximize")
    saved = trial_module.save_atomic

    def save_then_interrupted(obj: dict, path: Path) -> None:
        saved(obj, path)
        if obj["epoch"] == 2:
            interrupt.STOPPING.set()  # what the signal handler does before it raises
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos")

    monkeypatch.setattr(trial_module, "save_atomic", save_then_interrupted)
    assert worker_here(paths, datasets_dir, epochs=3) == 130
    failed, waiting = optuna.load_study(study_name="quickstart", storage=paths.storage_url).trials
    assert (failed.state.name, waiting.state.name) == ("FAIL", "WAITING")
    assert waiting.system_attrs["failed_trial"] == failed.number
    run = MlflowClient(paths.tracking_uri).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.data.tags["sweeper.fail_reason"].startswith("interrupted")
    assert (paths.checkpoints("quickstart") / "trial-0-last.pt").exists()
