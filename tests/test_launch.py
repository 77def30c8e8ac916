"""End to end: real sweeps of studies/quickstart.py on SQLite and a real MLflow store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from processes import children

from sweeper import tracking
from sweeper.pool import default_tracking_uri
from sweeper.storage import make_storage

REPO = Path(__file__).resolve().parents[1]
SWEEPER = str(Path(sys.executable).parent / "sweeper")
QUICKSTART = str(REPO / "studies" / "quickstart.py")
SMALL = ["--epochs", "2", "--train-size", "1000", "--no-progress", "--no-ensemble"]


def sweeper(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SWEEPER, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def load(sweep_dir: Path) -> optuna.Study:
    storage = make_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    return optuna.load_study(study_name="quickstart", storage=storage)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    done = sweeper(
        "launch", QUICKSTART, "--dir", str(sweep_dir), "--trials", "4", "--workers", "2",
        "--data-dir", str(datasets_dir), *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


def test_every_trial_finishes_and_has_one_run(sweep: Path) -> None:
    study = load(sweep)
    trials = study.get_trials()
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    uri = default_tracking_uri(sweep)
    runs = tracking.runs_of_study(uri, "quickstart")
    assert len(runs) == 4
    client = MlflowClient(tracking_uri=uri)
    by_id = {run.info.run_id: run for run in runs}
    for trial in trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]  # trial -> run
        assert run.data.tags["sweeper.trial"] == str(trial.number)  # run -> trial
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"]
        for key in ("sweeper.worker", "sweeper.device", "sweeper.host", "sweeper.split_hash"):
            assert run.data.tags[key]
        assert float(run.data.params["lr"]) == trial.params["lr"]
        assert run.data.params["model"] == trial.user_attrs["config"]["model"] == "cnn2"
        epochs = trial.user_attrs["epochs_run"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, epochs + 1))
        for key in ("train_loss", "train_acc", "val_loss", "lr", "seconds", "images_per_s"):
            assert len(client.get_metric_history(run.info.run_id, key)) == epochs
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert paths == {"plots/learning_curve.png", "plots/confusion_matrix.png"}
        assert client.list_artifacts(run.info.run_id, "checkpoints")
    assert {run.data.tags["sweeper.worker"] for run in runs} == {"w0", "w1"}


def test_launching_again_resumes_without_rerunning(sweep: Path, datasets_dir: Path) -> None:
    before = {t.number: t.datetime_complete for t in load(sweep).get_trials()}
    again = sweeper(
        "launch", QUICKSTART, "--dir", str(sweep), "--trials", "4",
        "--data-dir", str(datasets_dir), *SMALL,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    after = {t.number: t.datetime_complete for t in load(sweep).get_trials()}
    assert after == before
    more = sweeper(
        "launch", QUICKSTART, "--dir", str(sweep), "--trials", "5",
        "--data-dir", str(datasets_dir), *SMALL,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(load(sweep).get_trials()) == 5


def test_status_lists_trials_best_first(sweep: Path) -> None:
    done = sweeper("status", "quickstart", "--dir", str(sweep), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) >= 4
    values = [row["value"] for row in rows if row["value"] is not None]
    assert values == sorted(values, reverse=True)
    by_file = sweeper("status", QUICKSTART, "--dir", str(sweep), "--csv")
    assert by_file.stdout.startswith("trial,state,value")


def test_train_from_run_repeats_a_trial(sweep: Path, datasets_dir: Path) -> None:
    trial = load(sweep).best_trial
    run_id = trial.user_attrs["mlflow_run_id"]
    done = sweeper(
        "train", "--from-run", run_id, "--dir", str(sweep), "--epochs", "1", "--json",
        "--data-dir", str(datasets_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["config"]["model"] == trial.user_attrs["config"]["model"]
    assert report["config"]["lr"] == trial.params["lr"]
    assert report["config"]["train_size"] == 1000


def test_a_killed_worker_loses_no_trial(tmp_path: Path, datasets_dir: Path) -> None:
    env = {**os.environ, "SWEEPER_HEARTBEAT_S": "1", "SWEEPER_GRACE_S": "4"}
    launcher = subprocess.Popen(
        [SWEEPER, "launch", QUICKSTART, "--dir", str(tmp_path), "--trials", "3",
         "--workers", "1", "--epochs", "3", "--train-size", "3000", "--no-progress",
         "--no-ensemble",
         "--data-dir", str(datasets_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    checkpoints = tmp_path / "checkpoints" / "quickstart"
    deadline = time.time() + 300
    while not list(checkpoints.glob("trial-*-last.pt")):  # a trial is past its first epoch
        assert time.time() < deadline and launcher.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    killed_trial = int(next(checkpoints.glob("trial-*-last.pt")).name.split("-")[1])
    (worker,) = children(launcher.pid)
    os.kill(worker, signal.SIGKILL)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    trials = load(tmp_path).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    (failed,) = [t for t in trials if t.state.name == "FAIL"]
    assert failed.number == killed_trial
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.params == failed.params
    assert retry.user_attrs["mlflow_run_id"] == failed.user_attrs["mlflow_run_id"]
    runs = tracking.runs_of_study(default_tracking_uri(tmp_path), "quickstart")
    assert len(runs) == 3  # the retry continued the killed trial's run


def test_ctrl_c_keeps_the_running_trial_for_the_next_launch(
    tmp_path: Path, datasets_dir: Path
) -> None:
    args = [SWEEPER, "launch", QUICKSTART, "--dir", str(tmp_path), "--trials", "2",
            "--workers", "1", "--epochs", "3", "--train-size", "3000", "--no-progress",
         "--no-ensemble",
            "--data-dir", str(datasets_dir)]  # fmt: skip
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "checkpoints" / "quickstart"
    deadline = time.time() + 300
    while not list(checkpoints.glob("trial-*-last.pt")):
        assert time.time() < deadline and launcher.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err[-3000:]
    trials = load(tmp_path).get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    (waiting,) = [t for t in trials if t.state.name == "WAITING"]
    interrupted = waiting.system_attrs["failed_trial"]
    assert (checkpoints / f"trial-{interrupted}-last.pt").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load(tmp_path).get_trials()
    (resumed,) = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted]
    assert resumed.state.name in ("COMPLETE", "PRUNED")
    assert resumed.user_attrs["resumed_from_epoch"] >= 1
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 2


@pytest.mark.parametrize("broken", ["mlflow experiment", "optuna study"])
def test_a_launcher_whose_setup_fails_stops_its_early_workers(
    tmp_path: Path, datasets_dir: Path, broken: str
) -> None:
    """Workers start while the launcher opens the study and the MLflow run; if that fails, none
    stays."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    if broken == "mlflow experiment":
        uri = default_tracking_uri(sweep_dir)
        MlflowClient(uri).delete_experiment(tracking.experiment_for(uri, "quickstart"))
        expected = ["MLflow experiment 'quickstart'", "is deleted"]
    else:
        optuna.create_study(study_name="quickstart", direction="minimize",
                            storage=f"sqlite:///{sweep_dir / 'optuna.db'}")  # fmt: skip
        expected = ["quickstart.py: metric='val_acc' needs direction maximize", "rename the study"]
    done = sweeper("launch", QUICKSTART, "--dir", str(sweep_dir), "--workers", "2",
                   "--data-dir", str(datasets_dir), *SMALL, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert all(text in done.stderr for text in expected), done.stderr
    assert load(sweep_dir).trials == []
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _mentions(p, str(sweep_dir))]
    assert left == []


def test_a_launch_without_its_data_fails_before_it_stores_anything(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    done = sweeper("launch", QUICKSTART, "--dir", str(tmp_path / "sweep"), "--data-dir", str(empty),
                   *SMALL, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"sweeper: error: dataset: cifar10 is not in {empty}")
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text in cmdline.read_text()
    except OSError:  # the process ended meanwhile
        return False


def test_a_worker_whose_launcher_died_before_handing_over_says_so(
    tmp_path: Path, datasets_dir: Path
) -> None:
    done = subprocess.run(
        [SWEEPER, "worker", QUICKSTART, "--dir", str(tmp_path / "sweep"), "--from-launcher"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "sweeper: error: the launcher stopped before it handed over the MLflow launch run"
    )
