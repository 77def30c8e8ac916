"""The team topology with plain processes: one PostgreSQL, one `mlflow server`, three workers.

The same shape as docker-compose.yml: a `sweeper launch` (one worker of its own) creates the
study on PostgreSQL and two `sweeper worker` processes join it; every process logs to a real
`mlflow server` whose backend store is PostgreSQL and whose artifacts it proxies to a local
directory. Then the server is stopped for 20 s in the middle of a trial: nothing may fail and
nothing may be missing afterwards.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART, REPO, free_port, sweeper_here
from mlflow import MlflowClient

from sweeper.stores import tracking
from sweeper.stores.storage import make_storage
from sweeper.sweep.retention import top_trials

BIN = Path(sys.executable).parent
SECRET = "pg-Secret-0815"  # trust auth ignores it; it must show up nowhere
SMALL = ["--epochs", "2", "--train-size", "500", "--val-size", "500",
         "--data-dir"]  # fmt: skip


class MlflowServer:
    """A real `mlflow server` process that a test can stop and start again on the same port."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [BIN / "mlflow", "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # uvicorn and its worker
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def server(
    new_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    instance = MlflowServer(new_database(), root / "artifacts", root / "server.log")
    instance.start()
    yield instance
    instance.stop()


def with_password(url: str) -> str:
    """The URL with a password (the local server trusts 127.0.0.1, so any password works)."""
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def finished(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    return [t for t in study.get_trials() if not t.user_attrs.get("surplus")]


@pytest.fixture(scope="module")
def topology(
    server: MlflowServer,
    new_database: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
    datasets_dir: Path,
) -> dict:
    """A launcher with one worker, then two more workers on other "hosts" (sweep dirs)."""
    storage = with_password(new_database())
    root = tmp_path_factory.mktemp("topology")
    common = ["--storage", storage, "--tracking-uri", server.url, "--trials", "6",
              *SMALL, str(datasets_dir)]  # fmt: skip
    launcher = subprocess.Popen(
        [BIN / "sweeper", "launch", QUICKSTART, "--dir", str(root / "launcher"), "--workers", "1",
         "--no-ensemble", "--no-progress", *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while "quickstart" not in optuna.get_all_study_names(make_storage(storage)):
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the launcher did not create the study"
        time.sleep(0.5)
    workers = [
        subprocess.Popen(
            [
                BIN / "sweeper",
                "worker",
                QUICKSTART,
                "--dir",
                str(root / f"host{i}"),
                "--threads",
                "1",
                *common,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (1, 2)
    ]
    outputs = [process.communicate(timeout=900) for process in (launcher, *workers)]
    codes = [process.returncode for process in (launcher, *workers)]
    assert codes == [0, 0, 0], [err[-2000:] for _, err in outputs]
    return {"storage": storage, "outputs": outputs, "root": root}


def test_three_workers_share_one_budget_on_postgres(topology: dict) -> None:
    trials = finished(topology["storage"], "quickstart")
    assert len(trials) == 6
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 3, workers  # the launcher's w0 and both joined workers ran trials


def test_every_trial_is_one_complete_run_on_the_server(
    topology: dict, server: MlflowServer
) -> None:
    trials = finished(topology["storage"], "quickstart")
    runs = tracking.runs_of_study(server.url, "quickstart").set_index("run_id", drop=False)
    assert sorted(runs.index) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    client = MlflowClient(tracking_uri=server.url)
    study = optuna.load_study(study_name="quickstart", storage=make_storage(topology["storage"]))
    top = {t.number for t in top_trials(study, 3)}  # the launch deleted the others' best weights
    for trial in trials:
        run = runs.loc[trial.user_attrs["mlflow_run_id"]]
        assert run["status"] == "FINISHED"
        assert run["tags.optuna.state"] == trial.state.name
        steps = [m.step for m in client.get_metric_history(run["run_id"], "val_acc")]
        assert sorted(steps) == list(range(1, trial.user_attrs["epochs_run"] + 1))
        paths = {a.path for a in client.list_artifacts(run["run_id"], "plots")}
        assert paths == {"plots/confusion_matrix.json", "plots/confusion_matrix.png"}
        kept = [a.path for a in client.list_artifacts(run["run_id"], "checkpoints")]
        assert kept == ([f"checkpoints/trial-{trial.number}-best.pt"] if trial.number in top
                        else []), trial.number  # fmt: skip
    # proxied artifacts: the files went through the server into its --artifacts-destination, and
    # the launch deleted those it did not keep through the server too
    stored = list(server.artifacts.rglob("trial-*-best.pt"))
    assert len(stored) == len(top) == 3
    for root in topology["root"].iterdir():  # no host kept a copy of its own
        assert not list(root.rglob("*.pt")), root


def test_ui_of_a_tracking_server_is_the_servers_own(
    topology: dict, server: MlflowServer, tmp_path: Path
) -> None:
    """The server already serves the UI: `sweeper ui` gives it sweeper's view and its URL."""
    done = subprocess.run(
        [BIN / "sweeper", "ui", "quickstart", "--tracking-uri", server.url, "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    url = done.stdout.strip().removeprefix("MLflow UI: ")
    experiment = MlflowClient(tracking_uri=server.url).get_experiment_by_name("quickstart")
    assert url == (f"{server.url}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey="
                   "sweeper&compareRunsMode=CHART&workflowType=machine_learning")  # fmt: skip
    assert "mlflow.sharedViewState.sweeper" in experiment.tags
    with urllib.request.urlopen(server.url, timeout=30) as page:
        assert page.status == 200


def test_an_ensemble_on_a_host_without_the_sweep_files_reads_the_weights_from_the_server(
    topology: dict, server: MlflowServer, datasets_dir: Path, tmp_path: Path
) -> None:
    """The best weights live on the tracking server only: a host that ran none of the trials
    builds the ensemble (its members partly the source trials as trained), then `sweeper gc`
    deletes through the server what neither the top trial nor the ensemble needs."""
    flags = ["--storage", topology["storage"], "--tracking-uri", server.url, "--dir", str(tmp_path)]
    done = sweeper_here(
        "ensemble", "quickstart", "--k", "2", "--seeds", "2", "--epochs", "2",
        "--train-size", "500",
        "--val-size", "500", "--data-dir", str(datasets_dir), "--no-progress", *flags,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "of the members are their source trials as trained" in done.stdout, done.stdout
    assert "ensemble on the test split:" in done.stdout
    gc = sweeper_here("gc", "quickstart", "--keep", "1", *flags)
    assert gc.returncode == 0, gc.stderr[-3000:]
    storage = make_storage(topology["storage"])
    members = optuna.load_study(study_name="quickstart.ensemble", storage=storage)
    best = optuna.load_study(study_name="quickstart", storage=storage).best_trial
    needed = {best.number} | {t.params["source_trial"] for t in members.trials}
    assert gc.stdout.count("deleted best weights of trial") == 1, gc.stdout  # the third of the top
    client = MlflowClient(tracking_uri=server.url)
    for trial in finished(topology["storage"], "quickstart"):
        kept = client.list_artifacts(trial.user_attrs["mlflow_run_id"], "checkpoints")
        assert bool(kept) == (trial.number in needed), (trial.number, gc.stdout)


def test_the_storage_password_shows_up_nowhere(topology: dict, server: MlflowServer) -> None:
    printed = "".join(out + err for out, err in topology["outputs"])
    assert SECRET not in printed
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("quickstart")
    for run in client.search_runs([experiment.experiment_id]):
        assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    for path in topology["root"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".txt", ".log"):
            assert SECRET not in path.read_text(errors="replace"), path


def test_a_worker_for_a_study_the_storage_lacks_is_one_line(topology: dict, tmp_path: Path) -> None:
    done = subprocess.run(
        [BIN / "sweeper", "worker", str(REPO / "studies" / "lenet.py"), "--dir", str(tmp_path),
         "--storage", topology["storage"]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no study 'lenet'" in lines[0] and "it holds: quickstart" in lines[0]
    assert SECRET not in done.stderr


OUTAGE_STUDY = """
from sweeper.spec.study import Study

study = Study(
    name="outage",
    space=lambda trial: {"model": "cnn2", "lr": trial.suggest_float("lr", 0.02, 0.05)},
    fixed={"dataset": "cifar10", "val_size": 1000, "augment": False, "threads": 1},
    trials=1,
    epochs=40,
    patience=100,
    sampler="random",
    pruner="none",
)
"""


@pytest.mark.fault
def test_tracking_server_down_for_20_s_loses_nothing(
    server: MlflowServer, tmp_path: Path, datasets_dir: Path
) -> None:
    study_file = tmp_path / "outage.py"
    study_file.write_text(OUTAGE_STUDY)
    launch = subprocess.Popen(
        [BIN / "sweeper", "launch", str(study_file), "--dir", str(tmp_path / "sweep"),
         "--tracking-uri", server.url, "--train-size", "2000", "--data-dir", str(datasets_dir),
         "--workers", "1", "--no-ensemble", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    database = tmp_path / "sweep" / "optuna.db"

    def epochs_reported() -> int:
        if not database.exists():
            return 0
        storage = make_storage(f"sqlite:///{database}")
        try:
            trials = optuna.load_study(study_name="outage", storage=storage).get_trials()
        except KeyError:
            return 0
        return max((len(t.intermediate_values) for t in trials), default=0)

    deadline = time.monotonic() + 300
    while epochs_reported() < 2:
        assert launch.poll() is None, launch.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the trial did not start"
        time.sleep(0.5)
    server.stop()
    before = epochs_reported()
    time.sleep(20)
    during = epochs_reported()
    server.start()
    _, err = launch.communicate(timeout=600)
    assert launch.returncode == 0, err[-3000:]
    assert during >= before + 3, (before, during)  # training went on while the server was down
    assert "unreachable" in err and "is back" in err, err[-3000:]

    [trial] = finished(f"sqlite:///{database}", "outage")
    assert trial.state.name == "COMPLETE"
    [run] = tracking.runs_of_study(server.url, "outage").to_dict("records")
    assert run["run_id"] == trial.user_attrs["mlflow_run_id"]
    assert run["status"] == "FINISHED"
    client = MlflowClient(tracking_uri=server.url)
    epochs = trial.user_attrs["epochs_run"]
    assert epochs == 40
    for key in ("val_acc", "train_loss", "lr", "seconds"):
        steps = sorted(m.step for m in client.get_metric_history(run["run_id"], key))
        assert steps == list(range(1, epochs + 1)), key  # every epoch once, none twice
    assert [a.path for a in client.list_artifacts(run["run_id"], "checkpoints")]


class ReplyLosingProxy(http.server.ThreadingHTTPServer):
    """Passes HTTP on to the MLflow server, except that the reply to the first runs/create is
    lost: the server made the run, the client hears only a closed connection."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.creates = 0


class _Forward(http.server.BaseHTTPRequestHandler):
    server: ReplyLosingProxy

    def forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, reply_headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, reply_headers, payload = error.code, error.headers, error.read()
        if self.path.endswith("/runs/create"):
            self.server.creates += 1
            if self.server.creates == 1:
                self.close_connection = True
                return
        self.send_response(status)
        for key, value in reply_headers.items():
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "date",
                                   "server"):  # fmt: skip
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.fault
def test_a_trial_run_created_twice_after_a_lost_reply_is_kept_once(server: MlflowServer) -> None:
    proxy = ReplyLosingProxy(server.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        experiment = tracking.experiment_for(server.url, "lost-reply")
        tracker = tracking.TrialTracker(proxy.url, experiment, None)
        run_id = tracker.start("lost-reply", 0, {"lr": 0.1}, {})
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.creates == 2  # the client sent create_run again: the server made two runs
    [run] = tracking.runs_of_study(server.url, "lost-reply").to_dict("records")
    assert run["run_id"] == run_id
    assert {k: v for k, v in run.items() if k.startswith("params.")} == {"params.lr": "0.1"}
