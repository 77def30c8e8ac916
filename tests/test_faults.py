"""The fault suite: a restarted database, a killed launcher, a full or unwritable checkpoint disk.

Every test runs real `sweeper launch` processes of studies/quickstart.py on a slice of the real
CIFAR-10 and checks the stores afterwards: the trial budget is met exactly, no trial is left
RUNNING, and each finished trial has exactly one MLflow run. The PostgreSQL test uses a
throwaway cluster of its own (initdb in a temporary directory), never the machine's server.
Processes are signalled only by the ids (or the process group) these tests started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from helpers import QUICKSTART, SWEEPER, free_port, running, workers_of
from mlflow import MlflowClient

from sweeper.errors import SweeperError
from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.stores.storage import make_storage

pytestmark = pytest.mark.fault

STUDY = "quickstart"
FINISHED = ("COMPLETE", "PRUNED")
TINY = ["--train-size", "500", "--no-progress", "--no-ensemble"]
ROOT = os.geteuid() == 0
# A worker that died is noticed after seconds, not the default half minute.
FAST_RETRY = {"SWEEPER_HEARTBEAT_S": "2", "SWEEPER_GRACE_S": "6"}


# --- launching and watching sweeps -------------------------------------------------------------


@dataclass
class Launch:
    """A `sweeper launch` in its own process group, its output in files (never a pipe: the
    workers inherit it, and an orphaned worker would hold a pipe open)."""

    process: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launch ran past {timeout:.0f} s; its stderr ends:\n{self.tail()}")

    def stderr(self) -> str:
        """All the launch wrote to stderr, its workers' lines included."""
        return self.err.read_text(errors="replace")

    def tail(self) -> str:
        """The end of stderr, for an assertion's message."""
        return self.stderr()[-4000:]

    def stop(self) -> None:
        """Kill what is left of this launch: its process group holds the launcher and its
        workers, orphaned ones included, and nothing else."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=30)


@pytest.fixture
def launches() -> Iterator[Callable[..., Launch]]:
    """Start launches; whatever a failing test leaves running is killed at teardown."""
    started: list[Launch] = []

    def start(sweep_dir: Path, *args: str, env: dict[str, str] | None = None) -> Launch:
        number = len(started)
        out, err = (
            sweep_dir.parent / f"launch{number}.out",
            sweep_dir.parent / f"launch{number}.err",
        )
        with out.open("w") as out_file, err.open("w") as err_file:
            process = subprocess.Popen(
                [SWEEPER, "launch", QUICKSTART, "--dir", str(sweep_dir), *args],
                stdout=out_file,
                stderr=err_file,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        started.append(Launch(process, out, err))
        return started[-1]

    yield start
    for launch in started:
        launch.stop()


def sqlite_url(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir / 'optuna.db'}"


def stored_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as the storage holds them now."""
    storage = make_storage(url)
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def wait_for(
    what: str, check: Callable[[], object], launch: Launch, timeout: float = 240
) -> object:
    """Poll `check` until it returns something truthy, while the launch runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (KeyError, SweeperError):  # the launcher has not created the study yet
            found = None
        if found:
            return found
        assert launch.process.poll() is None, (
            f"the launch exited ({launch.process.returncode}) before {what}:\n{launch.tail()}"
        )
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{launch.tail()}"
        time.sleep(0.3)


def running_checkpoints(sweep_dir: Path) -> list[Path]:
    """The epoch checkpoints of trials in progress: one exists once a trial is past epoch 1."""
    return list((sweep_dir / "checkpoints" / STUDY).glob("trial-*-last.pt"))


def assert_budget_met_once(url: str, sweep_dir: Path, budget: int) -> list:
    """Exactly `budget` finished trials, none RUNNING, and trials and MLflow runs one to one:
    each counted trial has its own run, every trial run of the study belongs to a trial, and
    a retry continues its first try's run instead of opening a second one."""
    trials = stored_trials(url)
    states = {t.number: t.state.name for t in trials}
    counted = [t for t in trials if t.state.name in FINISHED and not t.user_attrs.get("surplus")]
    assert len(counted) == budget, states
    assert not [t for t in trials if t.state.name == "RUNNING"], states
    run_ids = [t.user_attrs.get("mlflow_run_id") for t in counted]
    assert None not in run_ids, states
    assert len(set(run_ids)) == budget, "two finished trials share an MLflow run"
    runs = tracking.runs_of_study(default_tracking_uri(sweep_dir), STUDY).set_index("run_id")
    assert runs.index.is_unique
    owner: dict[str, int] = {}  # run id -> the trial that finished it
    for trial in counted:
        run = runs.loc[trial.user_attrs["mlflow_run_id"]]
        assert run["tags.sweeper.trial"] == str(trial.number)
        assert run["status"] == "FINISHED", (trial.number, run["status"])
        assert run["tags.optuna.state"] == trial.state.name
        owner[run.name] = trial.number
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    for run_id, run in runs.iterrows():  # a run no counted trial owns is a failed trial's
        if run_id in owner:
            continue
        number = int(run["tags.sweeper.trial"])
        assert states.get(number) == "FAIL", (number, states, run["status"])
        assert number not in retried, f"trial {number} was retried, yet its run is orphaned"
        assert run["status"] == "FAILED", (number, run["status"])
    return trials


# --- 1. PostgreSQL restarts in the middle of a sweep -------------------------------------------


def pg_binary(name: str) -> str:
    found = shutil.which(name) or f"/usr/lib/postgresql/15/bin/{name}"
    assert Path(found).exists(), f"{name} not found (PostgreSQL server binaries)"
    return found


def as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres OS user."""
    return ["runuser", "-u", "postgres", "--", *command] if ROOT else command


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster that this module may stop and start at will."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        done = subprocess.run(
            as_postgres([pg_binary("pg_ctl"), "-D", str(self.data), *args]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        log = (self.root / "server.log").read_text(errors="replace")[-2000:]
        assert done.returncode == 0, f"pg_ctl {args}: {done.stdout}{done.stderr}\n{log}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def scratch_postgres() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="sweeper-faults-pg-"))  # /tmp: reachable by postgres
    (root / "sock").mkdir()
    (root / "server.log").touch()
    if ROOT:
        for path in (root, root / "sock", root / "server.log"):
            shutil.chown(path, "postgres", "postgres")
    cluster = Cluster(root, free_port())
    try:
        done = subprocess.run(
            as_postgres([pg_binary("initdb"), "-D", str(cluster.data), "-A", "trust",
                         "-U", "postgres", "--no-sync"]),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            subprocess.run(
                as_postgres([pg_binary("pg_ctl"), "-D", str(cluster.data), "-m", "immediate",
                             "-w", "stop"]),
                capture_output=True, timeout=120,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restart_mid_sweep_loses_and_doubles_no_trial(
    scratch_postgres: Cluster,
    launches: Callable[..., Launch],
    tmp_path: Path,
    datasets_dir: Path,
) -> None:
    cluster, sweep_dir, budget = scratch_postgres, tmp_path / "sweep", 4
    launch = launches(
        sweep_dir, "--storage", cluster.url, "--trials", str(budget), "--workers", "2",
        "--epochs", "3", "--data-dir", str(datasets_dir), *TINY, env=FAST_RETRY,
    )  # fmt: skip
    wait_for("trial past its first epoch", lambda: running_checkpoints(sweep_dir), launch)
    running = [t.number for t in stored_trials(cluster.url) if t.state.name == "RUNNING"]
    assert running, "the restart must hit a sweep with a trial in progress"
    before = cluster.postmaster_pid()
    cluster.stop("fast")  # every connection is cut; for 3 s nothing answers
    time.sleep(3)
    cluster.start()
    assert cluster.postmaster_pid() != before  # a real restart, not a no-op
    code = launch.wait(timeout=400)
    assert code == 0, launch.tail()
    trials = assert_budget_met_once(cluster.url, sweep_dir, budget)
    for number in running:  # the trials the restart interrupted ended (or were retried)
        chain = [number]
        while (
            retry := next(
                (t for t in trials if t.system_attrs.get("failed_trial") == chain[-1]), None
            )
        ) is not None:
            chain.append(retry.number)
        assert {t.number: t.state.name for t in trials}[chain[-1]] in FINISHED, chain


# --- 2. the launcher is SIGKILLed mid-sweep ----------------------------------------------------


PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Make this process the child subreaper of what it starts: a process orphaned below it
    becomes its child, so the test can wait for it and read its exit code."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def exit_codes(pids: list[int], timeout: float) -> dict[int, int]:
    """Wait for adopted processes to end; their exit codes (-N: killed by signal N)."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(codes) < len(pids):
        for pid in set(pids) - set(codes):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"orphaned workers still running: {pids}, {codes}"
        time.sleep(0.5)
    return codes


def test_killed_launcher_orphans_finish_and_a_new_launch_resumes(
    launches: Callable[..., Launch], tmp_path: Path, datasets_dir: Path
) -> None:
    sweep_dir, budget = tmp_path / "sweep", 3
    args = ["--trials", str(budget), "--workers", "2", "--epochs", "2",
            "--data-dir", str(datasets_dir), *TINY]  # fmt: skip
    with adopting_orphans():
        first = launches(sweep_dir, *args, env=FAST_RETRY)
        wait_for("trial past its first epoch", lambda: running_checkpoints(sweep_dir), first)
        workers = workers_of(first.process.pid)
        assert len(workers) == 2, workers
        (fork_server,) = {parent_of(pid) for pid in workers}
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=30) == -signal.SIGKILL
        # Orphaned, the workers go on: each runs trials until the budget is spent, then exits;
        # their fork server (adopted here) reaps them and ends after the last.
        codes = exit_codes([fork_server], timeout=300)
    assert set(codes.values()) == {0}, f"{codes}\n{first.tail()}"
    assert "Traceback" not in first.stderr() and not any(map(running, workers)), first.tail()
    trials = stored_trials(sqlite_url(sweep_dir))
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    ended = {t.number: t.datetime_complete for t in trials if t.state.name in FINISHED}
    again = launches(sweep_dir, *args, env=FAST_RETRY)
    assert again.wait(timeout=300) == 0, again.tail()
    trials = assert_budget_met_once(sqlite_url(sweep_dir), sweep_dir, budget)
    # The new launch ran only what was missing: no finished trial was run again.
    assert {n: t.datetime_complete for t in trials if (n := t.number) in ended} == ended
    # The killed launcher's MLflow run was ended as KILLED by the new launch; the new one FINISHED.
    client = MlflowClient(tracking_uri=default_tracking_uri(sweep_dir))
    experiment = client.get_experiment_by_name(STUDY)
    launch_runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`sweeper.kind` = 'launch'"
    )
    assert sorted(r.info.status for r in launch_runs) == ["FINISHED", "KILLED"]


# --- 3. the checkpoint directory is full or unwritable -----------------------------------------


def fill(directory: Path) -> None:
    """Write zeros until the file system says it is full."""
    with open(directory / "filler", "wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)


@contextlib.contextmanager
def blocked(directory: Path, how: str) -> Iterator[Callable[[], None]]:
    """Checkpoint writes into `directory` fail until the yielded `free()` is called; whatever
    was done to the directory is undone on leaving, whatever happened."""
    if how == "disk_full":  # a tmpfs of its own, filled to the last byte
        if not ROOT:
            pytest.fail("the disk-full case mounts a tmpfs: run the fault suite as root")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(directory)],
                       check=True)  # fmt: skip
        try:
            fill(directory)
            yield lambda: (directory / "filler").unlink(missing_ok=True)  # as a user frees space
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=True)
    elif ROOT:  # root ignores permission bits: an immutable directory refuses even root
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
        try:
            yield lambda: directory.chmod(0o755)
        finally:
            directory.chmod(0o755)


CAUSE = {"disk_full": "No space left on device", "unwritable": "Operation not permitted"}
if not ROOT:
    CAUSE["unwritable"] = "Permission denied"


def checkpoint_failures(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials failed by a checkpoint write; none before the launcher made the study (the
    MLflow store comes after it), so the test never races the launcher to create tables."""
    if not (sweep_dir / "mlflow.db").exists():
        return []
    return [
        t
        for t in stored_trials(sqlite_url(sweep_dir))
        if t.state.name == "FAIL"
        and t.user_attrs.get("fail_reason", "").startswith("cannot write checkpoint")
    ]


def assert_one_clear_line(trial: optuna.trial.FrozenTrial, cause: str, sweep_dir: Path) -> None:
    reason = trial.user_attrs["fail_reason"]
    assert "\n" not in reason and cause in reason, reason
    assert str(sweep_dir / "checkpoints" / STUDY) in reason, reason
    run = MlflowClient(default_tracking_uri(sweep_dir)).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["sweeper.fail_reason"] == reason
    assert run.data.tags["optuna.state"] == "FAIL"


@pytest.mark.parametrize("how", ["disk_full", "unwritable"])
def test_checkpoint_write_failure_fails_the_trial_not_the_study(
    how: str, launches: Callable[..., Launch], tmp_path: Path, datasets_dir: Path
) -> None:
    sweep_dir, budget = tmp_path / "sweep", 2
    checkpoints = sweep_dir / "checkpoints" / STUDY
    checkpoints.mkdir(parents=True)
    with blocked(checkpoints, how) as free:
        launch = launches(
            sweep_dir, "--trials", str(budget), "--workers", "1", "--epochs", "2",
            "--data-dir", str(datasets_dir), *TINY,
        )  # fmt: skip
        try:
            wait_for("checkpoint failure", lambda: checkpoint_failures(sweep_dir), launch)
        finally:
            free()
        code = launch.wait(timeout=300)
        assert code == 0, launch.tail()
        leftovers = [p.name for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, "a failed write left its temporary file behind"
    trials = assert_budget_met_once(sqlite_url(sweep_dir), sweep_dir, budget)
    failed = checkpoint_failures(sweep_dir)
    assert failed and len(failed) < 5
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for trial in failed:
        assert_one_clear_line(trial, CAUSE[how], sweep_dir)
        assert trial.number not in retried  # a trial that failed is not a dead worker's
    stderr = launch.stderr()
    assert "cannot write checkpoint" in stderr, stderr[-4000:]  # the worker says why...
    assert "Traceback" not in stderr, stderr[-4000:]  # ...in one line, not a traceback


def test_a_worker_gives_up_after_five_checkpoint_failures_in_a_row(
    launches: Callable[..., Launch], tmp_path: Path, datasets_dir: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    checkpoints = sweep_dir / "checkpoints" / STUDY
    checkpoints.mkdir(parents=True)
    with blocked(checkpoints, "unwritable"):
        launch = launches(
            sweep_dir, "--trials", "10", "--workers", "1", "--epochs", "2",
            "--data-dir", str(datasets_dir), *TINY,
        )  # fmt: skip
        code = launch.wait(timeout=300)
    stderr = launch.stderr()
    assert code == 2, stderr[-4000:]
    assert "every worker gave up" in stderr, stderr[-4000:]
    assert "worker w0 stops: 5 trials in a row failed; the last: cannot write checkpoint" in stderr
    assert "Traceback" not in stderr, stderr[-4000:]
    trials = stored_trials(sqlite_url(sweep_dir))  # the study survives, its failures recorded
    assert [t.state.name for t in trials] == ["FAIL"] * 5
    for trial in trials:
        assert_one_clear_line(trial, CAUSE["unwritable"], sweep_dir)


# --- 4. a worker called dead trains on (a network partition) -----------------------------------


def test_a_worker_called_dead_stops_its_trial_and_leaves_the_retry_alone(tmp_path: Path) -> None:
    """While the worker trains trial 0, the test fails it in the storage and queues its retry, as
    the other workers' heartbeat check would. The worker writes no further epoch checkpoint, logs
    no further epoch, leaves the MLflow run to the retry (never FAILED by it) and says so in one
    line; the retry (which this worker then takes) resumes from the last epoch that trial 0 saved,
    in the same run, and the ended trials' epoch checkpoints are gone."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    err = tmp_path / "worker.err"
    with open(err, "w") as stderr:
        worker = subprocess.Popen(
            [SWEEPER, "worker", QUICKSTART, "--dir", str(tmp_path), "--trials", "1",
             "--worker-name", "partitioned", "--device", "cpu", "--epochs", "5",
             "--train-size", "6000"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    first = tmp_path / "checkpoints" / STUDY / "trial-0-last.pt"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert worker.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.05)
    storage = make_storage(url)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    (trial,) = study.get_trials(deepcopy=False)
    storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    saved_epoch = torch.load(first, weights_only=True)["epoch"]  # what the retry must resume from
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    assert worker.wait(timeout=600) == 0, err.read_text()[-3000:]

    said = err.read_text()
    assert said.count("trial 0 is no longer RUNNING") == 1 and "Traceback" not in said, said
    failed, retry = stored_trials(url)
    assert (failed.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert "fail_reason" not in failed.user_attrs
    assert retry.user_attrs["resumed_from_epoch"] == saved_epoch  # nothing written after the FAIL
    run_id = retry.user_attrs["mlflow_run_id"]
    assert run_id == failed.user_attrs["mlflow_run_id"]
    run = MlflowClient(default_tracking_uri(tmp_path)).get_run(run_id)
    assert run.info.status == "FINISHED" and "sweeper.fail_reason" not in run.data.tags
    steps = [m.step for m in MlflowClient(default_tracking_uri(tmp_path)).get_metric_history(
        run_id, "val_acc")]  # fmt: skip
    assert sorted(steps) == list(range(1, retry.user_attrs["epochs_run"] + 1)), steps
    assert list((tmp_path / "checkpoints" / STUDY).iterdir()) == []  # both tries' files dropped
