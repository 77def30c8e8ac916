"""The worker pool: one worker process per device slot, the trial budget, retries, progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from sweeper.errors import SweeperError, first_line
from sweeper.storage import load_stored_study, make_storage, open_study
from sweeper.study import Study

MAX_WORKER_RESTARTS = 5  # a worker that dies more often than this is broken, not unlucky
MAX_FAILURES_IN_A_ROW = 5  # then the cause is the setup (a full disk), not the trials
EXIT_GAVE_UP = 3  # a worker's exit code after MAX_FAILURES_IN_A_ROW: not restarted
POLL_S = 1.0
# An NVIDIA, AMD (ROCm) or WSL2 GPU driver shows one of these; without them torch sees no GPU.
GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


@dataclass
class Sweep:
    """Where a sweep keeps its state: by default all of it under one directory."""

    dir: Path
    storage_url: str
    tracking_uri: str
    artifact_root: str | None

    @classmethod
    def resolve(cls, directory: str, storage: str | None, tracking_uri: str | None) -> Sweep:
        root = Path(directory).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            dir=root,
            storage_url=storage or f"sqlite:///{root / 'optuna.db'}",
            tracking_uri=tracking_uri or default_tracking_uri(root),
            artifact_root=None if tracking_uri else default_artifact_root(root),
        )

    @classmethod
    def existing(cls, directory: str, storage: str | None, tracking_uri: str | None) -> Sweep:
        """A sweep to read: a --dir without a launch is an error, not a new, empty store."""
        if storage is None and not (Path(directory) / "optuna.db").is_file():
            raise SweeperError(
                f"--dir {directory}: no optuna.db there; give the --dir of the launch"
            )
        return cls.resolve(directory, storage, tracking_uri)

    def checkpoint_dir(self, study_name: str) -> Path:
        return self.dir / "checkpoints" / study_name


def default_tracking_uri(sweep_dir: Path) -> str:
    """The embedded MLflow store of a local sweep: a sqlite file inside the sweep directory."""
    return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"


def default_artifact_root(sweep_dir: Path) -> str:
    """Where a local sweep's artifacts go: `<sweep dir>/artifacts`, as an absolute path."""
    return str(Path(sweep_dir).resolve() / "artifacts")


def budget_state(study: optuna.Study, budget: int | None) -> str:
    """ "run" (a trial may start), "wait" (others run the last ones) or "done"."""
    if budget is None:
        return "run"
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        if not trial.user_attrs.get("surplus"):
            counts[trial.state] += 1
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if finished >= budget:
        return "done"
    if counts[TrialState.WAITING] or finished + counts[TrialState.RUNNING] < budget:
        return "run"
    return "wait" if counts[TrialState.RUNNING] else "done"


def run_worker(
    study: Study,
    sweep: Sweep,
    *,
    device: str,
    worker: str,
    experiment_id: str | None,
    parent_run_id: str | None,
    budget: int | None,
    deadline: float | None,
    overrides: dict[str, Any],
    tags: dict[str, str] | None = None,
    packed: bool = False,
) -> int:
    """Run trials until the budget is spent or the deadline passes; return an exit code."""
    from sweeper import tracking
    from sweeper.trial import Objective

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    storage = make_storage(sweep.storage_url)
    optuna_study = load_stored_study(
        study.name,
        storage,
        sweep.storage_url,
        sampler=study.make_sampler(zlib.crc32(worker.encode())),
        pruner=study.make_pruner(),
    )
    if experiment_id is None:
        experiment_id = tracking.experiment_for(sweep.tracking_uri, study.name, sweep.artifact_root)
    objective = Objective(
        study=study,
        checkpoint_dir=sweep.checkpoint_dir(study.name),
        tracker=tracking.TrialTracker(sweep.tracking_uri, experiment_id, parent_run_id),
        worker=worker,
        device=device,
        overrides=overrides,
        budget=budget,
        tags=tags or {},
        lock_dir=sweep.dir / "locks",
        packed=packed,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        while deadline is None or time.time() < deadline:
            fail_stale_trials(optuna_study)
            state = budget_state(optuna_study, budget)
            if state == "done":
                break
            if state == "wait":  # a running trial may yet die and come back to be retried
                time.sleep(POLL_S * 2)
                continue
            optuna_study.optimize(objective, n_trials=1, catch=(Exception,))
            if objective.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                print(
                    f"sweeper: error: worker {worker} stops: {objective.failures_in_a_row} trials"
                    f" in a row failed; the last: {objective.last_failure}",
                    file=sys.stderr,
                )
                return EXIT_GAVE_UP
    except KeyboardInterrupt:
        _requeue_interrupted(optuna_study, worker)
        return 130
    except optuna.exceptions.StorageInternalError as error:  # cut off while creating a trial
        cause = first_line(error.__cause__ or error)
        print(f"sweeper: worker {worker} lost the storage ({cause}); the launcher starts another",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and SIGINT stop the process once; a second signal must not cut the clean-up."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _requeue_interrupted(study: optuna.Study, worker: str) -> None:
    """A trial stopped by Ctrl-C is failed by Optuna; queue its retry, which resumes it."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=None)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get("worker") == worker and trial.user_attrs.get("interrupted"):
            retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
            if trial.number not in retried:
                retry(study, trial)


def default_devices(workers: int | None, trials_per_gpu: int) -> list[str]:
    """One slot per GPU (times trials_per_gpu), else one CPU worker; --workers overrides."""
    gpus = 0
    if any(Path(p).exists() for p in GPU_DRIVER_FILES):  # else no need to import torch (seconds)
        import torch

        gpus = torch.cuda.device_count()
    if gpus:
        slots = [f"cuda:{i}" for i in range(gpus) for _ in range(trials_per_gpu)]
        count = workers or len(slots)
        return [slots[i % len(slots)] for i in range(count)]
    return ["cpu"] * (workers or 1)


def worker_command(
    study: Study, sweep: Sweep, device: str, worker: str, extra: list[str]
) -> list[str]:
    """A `sweeper worker` command line; an ensemble member study names its base study's file."""
    return [
        sys.executable, "-m", "sweeper.cli", "worker", study.file,
        "--dir", str(sweep.dir), "--storage", sweep.storage_url,
        "--tracking-uri", sweep.tracking_uri, "--device", device, "--worker-name", worker, *extra,
    ]  # fmt: skip


def launch(
    study: Study,
    sweep: Sweep,
    *,
    devices: list[str],
    budget: int | None,
    timeout: float | None,
    overrides: dict[str, Any],
    progress: bool = True,
    ensemble: dict[str, Any] | None = None,
) -> int:
    """Create the study, run the pool and the MLflow launch run to the end, then the ensemble."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _prefetch_data(study, overrides)  # milliseconds once cached; a missing dataset fails here
    optuna_study: optuna.Study | None = None
    context: dict[str, str] = {}

    def setup() -> tuple[optuna.Study, dict[str, str]]:
        """The Optuna study and the MLflow launch run, made while the workers import torch and
        MLflow."""
        nonlocal optuna_study
        from sweeper import tracking

        optuna_study = open_study(study, make_storage(sweep.storage_url))
        optuna_study.set_user_attr("study_file", study.file)
        optuna_study.set_user_attr("study_file_hash", study.file_hash)
        context["experiment_id"] = tracking.experiment_for(
            sweep.tracking_uri, study.name, sweep.artifact_root
        )
        context["parent_run_id"] = tracking.start_launch_run(
            sweep.tracking_uri,
            context["experiment_id"],
            study.name,
            {"sweeper.study_file_hash": study.file_hash, "sweeper.workers": str(len(devices))},
        )
        return optuna_study, context

    deadline = time.time() + timeout if timeout else None
    status = "FAILED"
    try:
        if not run_pool(study, sweep, setup, devices=devices, budget=budget, deadline=deadline,
                        overrides=overrides, extra=[], progress=progress):  # fmt: skip
            status = "KILLED"
            print("sweeper: stopped; running trials keep their checkpoints and resume next launch")
            return 130
        if ensemble and ensemble.get("k") and budget_state(optuna_study, budget) == "done":
            from sweeper.retrain import build_ensemble

            if not build_ensemble(study, sweep, optuna_study, devices=devices,
                                  experiment_id=context["experiment_id"],
                                  parent_run_id=context["parent_run_id"],
                                  overrides=overrides, progress=progress,
                                  **ensemble):  # fmt: skip
                status = "KILLED"
                return 130
        status = "FINISHED"
        return 0
    finally:
        if "parent_run_id" in context:
            from sweeper import tracking

            tracking.end_run(sweep.tracking_uri, context["parent_run_id"], status)


def run_pool(
    study: Study,
    sweep: Sweep,
    setup: Callable[[], tuple[optuna.Study, dict[str, str | None]]],
    *,
    devices: list[str],
    budget: int | None,
    deadline: float | None,
    overrides: dict[str, Any],
    extra: list[str],
    progress: bool,
) -> bool:
    """Run worker processes until the work is done; False if interrupted (Ctrl-C, SIGTERM).

    The workers start first: while they import torch and MLflow (seconds), setup() opens the
    Optuna study they work on and makes the MLflow runs; it returns that study and the launch
    context (experiment and parent run ids) that every worker reads on its stdin.
    """
    from sweeper.progress import Progress

    threads = max(1, (os.cpu_count() or 1) // len(devices))
    extra = [*extra, "--from-launcher", "--threads", str(threads)]
    if len(set(devices)) < len(devices) and devices[0].startswith("cuda"):
        extra.append("--packed")
    if budget is not None:
        extra += ["--trials", str(budget)]
    if deadline is not None:
        extra += ["--deadline", str(deadline)]
    for key, value in overrides.items():
        extra += [f"--{key.replace('_', '-')}", str(value)]
    commands = [
        worker_command(study, sweep, device, f"w{i}", extra) for i, device in enumerate(devices)
    ]
    handed = ""  # the context line, once setup() made it

    def start(command: list[str]) -> subprocess.Popen:
        worker = subprocess.Popen(command, stdin=subprocess.PIPE, text=True)
        if handed:
            _hand(worker, handed)
        return worker

    workers = [start(command) for command in commands]
    restarts = [0] * len(workers)
    view = None
    try:
        optuna_study, context = setup()
        handed = json.dumps(context) + "\n"
        for w in workers:
            _hand(w, handed)
        view = Progress(optuna_study, budget, enabled=progress)
        while True:
            view.update()
            for i, w in enumerate(workers):
                # A worker that died (killed, out of memory) is replaced while work remains.
                code = w.poll()
                if code not in (None, 0, 130, EXIT_GAVE_UP) and _work_remains(
                    optuna_study, budget, deadline
                ):
                    restarts[i] += 1
                    if restarts[i] > MAX_WORKER_RESTARTS:
                        _stop(workers)
                        raise SweeperError(
                            f"worker w{i} keeps failing (exit code {w.returncode}, "
                            f"{restarts[i]} starts); its error is printed above"
                        )
                    workers[i] = start(commands[i])
            if all(w.poll() is not None for w in workers):
                break
            time.sleep(POLL_S)
    except BaseException as error:  # the launcher stops: its workers must not run on, orphaned
        _stop(workers)
        if view is not None:
            view.close()
        if isinstance(error, KeyboardInterrupt):
            return False
        raise
    view.close()
    view.summary()
    if all(w.returncode == EXIT_GAVE_UP for w in workers):
        raise SweeperError("every worker gave up after failed trials; their errors are above")
    return True


def _hand(worker: subprocess.Popen, line: str) -> None:
    """Give a worker its launch context; one that already died is replaced by the pool loop."""
    try:
        worker.stdin.write(line)
        worker.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def read_context(stream: TextIO) -> dict[str, str | None]:
    """The launch context a launcher writes to its workers' stdin (see run_pool)."""
    line = stream.readline()
    if not line:
        raise SweeperError("the launcher stopped before it handed over the MLflow launch run")
    return json.loads(line)


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait()


def _work_remains(study: optuna.Study, budget: int | None, deadline: float | None) -> bool:
    return budget_state(study, budget) != "done" and (deadline is None or time.time() < deadline)


def _prefetch_data(study: Study, overrides: dict[str, Any]) -> None:
    """Decode the dataset once here, so the workers all start from the cache."""
    from sweeper.data import load_images

    values = {**study.fixed, **overrides}
    load_images(values.get("dataset", "cifar10"), values.get("data_dir"), values.get("image_size"))
