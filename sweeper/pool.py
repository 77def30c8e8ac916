"""The worker pool: one `sweeper worker` process per device slot, supervised until the budget is
spent. It knows trials and budgets, not what they are for (sweep or ensemble)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from sweeper.errors import SweeperError
from sweeper.paths import SweepPaths
from sweeper.progress import Progress
from sweeper.stopping import StopRule
from sweeper.storage import counted_trials

MAX_WORKER_RESTARTS = 5  # a worker that dies more often than this is broken, not unlucky
EXIT_GAVE_UP = 3  # a worker's exit code after too many failed trials in a row: not restarted
POLL_S = 1.0
# An NVIDIA, AMD (ROCm) or WSL2 GPU driver shows one of these; without them torch sees no GPU.
GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


class Budget(Enum):
    RUN = "run"  # a trial may start
    WAIT = "wait"  # others run the last ones; one may yet die and come back to be retried
    DONE = "done"


def budget_state(study: optuna.Study, budget: int | None, stop: StopRule | None = None) -> Budget:
    """Whether a worker may start another trial of `study` under `budget` finished trials (and,
    given a stop rule, while the study still improves)."""
    trials = counted_trials(study)
    if stop is not None and stop.reason(study, trials):
        return Budget.DONE
    if budget is None:
        return Budget.RUN
    counts = {state: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state] += 1
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if finished >= budget:
        return Budget.DONE
    if counts[TrialState.WAITING] or finished + counts[TrialState.RUNNING] < budget:
        return Budget.RUN
    return Budget.WAIT if counts[TrialState.RUNNING] else Budget.DONE


@dataclass
class LaunchContext:
    """What a launcher hands each of its workers on stdin once it has made them: the MLflow ids,
    and the stores' URLs, which may hold passwords and so never go on a worker's command line
    (where `ps` shows them to every user)."""

    experiment_id: str | None = None  # the MLflow experiment of the study
    parent_run_id: str | None = None  # the launch run the trial runs hang under
    storage_url: str | None = None  # the Optuna storage
    tracking_uri: str | None = None  # the MLflow store

    def line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def read(cls, stream: TextIO) -> LaunchContext:
        line = stream.readline()
        if not line:
            raise SweeperError("the launcher stopped before it handed over the MLflow launch run")
        return cls(**json.loads(line))


STOPPING = threading.Event()  # set by the first SIGTERM or SIGINT, whatever became of its error


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt once; a second one must not cut the clean-up."""

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        STOPPING.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def default_devices(workers: int | None, trials_per_gpu: int) -> list[str]:
    """One slot per GPU (times trials_per_gpu), else one CPU worker; --workers overrides."""
    gpus = 0
    if any(Path(p).exists() for p in GPU_DRIVER_FILES):  # else no need to import torch (seconds)
        import torch

        gpus = torch.cuda.device_count()
        if not gpus:  # a GPU machine whose torch sees none: say so, not train on the CPU quietly
            print("sweeper: note: this machine has a GPU driver but torch sees no GPU (torch"
                  f" {torch.__version__}, CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); the workers train on the"
                  " CPU", file=sys.stderr)  # fmt: skip
    if gpus:
        slots = [f"cuda:{i}" for i in range(gpus) for _ in range(trials_per_gpu)]
        count = workers or len(slots)
        return [slots[i % len(slots)] for i in range(count)]
    return ["cpu"] * (workers or 1)


@dataclass(frozen=True)
class Remote:
    """Workers that a cluster engine places (sweeper/ray_pool.py): how to start a pool of them,
    and what each slot holds."""

    start: Callable[[list[list[str]]], Workers]
    packed: bool  # several workers share each GPU
    threads: int = 1  # CPU threads of each worker


def worker_flags(
    devices: list[str],
    budget: int | None,
    deadline: float | None,
    overrides: dict[str, Any],
    remote: Remote | None = None,
) -> list[str]:
    """The `sweeper worker` flags every worker of one pool shares."""
    threads = remote.threads if remote else max(1, (os.cpu_count() or 1) // len(devices))
    flags = ["--from-launcher", "--threads", str(threads)]
    shared = len(set(devices)) < len(devices) and devices[0].startswith("cuda")
    if remote.packed if remote else shared:
        flags.append("--packed")
    if budget is not None:
        flags += ["--trials", str(budget)]
    if deadline is not None:
        flags += ["--deadline", str(deadline)]
    for key, value in overrides.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def worker_commands(
    study_file: str, paths: SweepPaths, devices: list[str], flags: list[str]
) -> list[list[str]]:
    """One `sweeper worker` command line per device slot (an ensemble's workers name the study
    file of the sweep); the stores' URLs come on stdin, in the LaunchContext."""
    return [
        [sys.executable, "-m", "sweeper.cli", "worker", study_file, "--dir", str(paths.dir),
         "--device", device, "--worker-name", f"w{i}", *flags]
        for i, device in enumerate(devices)
    ]  # fmt: skip


def run_pool(
    commands: list[list[str]],
    setup: Callable[[], tuple[optuna.Study, LaunchContext]],
    *,
    budget: int | None,
    deadline: float | None,
    progress: bool,
    table: bool = True,
    stop: StopRule | None = None,
    remote: Remote | None = None,
    each_poll: Callable[[optuna.Study], None] | None = None,
) -> bool:
    """Run worker processes until the work is done (then print the trials table unless not
    `table`); False if interrupted (Ctrl-C, SIGTERM). `each_poll(study)` runs at every poll of
    the workers and once after they ended (the launcher draws finished trials' figures).

    The workers start first: while they import torch and MLflow (seconds), setup() opens the
    Optuna study they work on and makes the MLflow runs; it returns that study and the launch
    context that every worker reads on its stdin. The workers are local processes, or `remote`
    ones (Ray actors) that run the same commands on a cluster's nodes.
    """
    workers = remote.start(commands) if remote else Workers(commands)
    view = None
    try:
        study, context = setup()
        workers.hand(context.line())
        view = Progress(study, budget, enabled=progress)
        while workers.supervise(lambda: _work_remains(study, budget, deadline, stop)):
            view.update()
            if each_poll is not None:
                each_poll(study)
            workers.wait(POLL_S)
        if each_poll is not None:
            each_poll(study)
    except BaseException as error:  # the launcher stops: its workers must not run on, orphaned
        workers.stop()
        if view is not None:
            view.close()
        if isinstance(error, KeyboardInterrupt):
            return False
        raise
    workers.stop()  # all ended: only remote workers (Ray actors) have something to let go
    view.close()
    if table:
        view.summary()
    if workers.all_gave_up():
        raise SweeperError("every worker gave up after failed trials; their errors are above")
    return True


class Workers:
    """The worker processes of one pool: started, handed their context, replaced, stopped."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.commands = commands
        self.handed = ""  # the context line, once setup() made it
        self.processes = [self.start(i) for i in range(len(commands))]
        self.restarts = [0] * len(commands)

    def start(self, slot: int) -> Any:
        """Start the worker of a slot; a subprocess.Popen here, as much of one elsewhere."""
        process = subprocess.Popen(self.commands[slot], stdin=subprocess.PIPE, text=True)
        if self.handed:
            self.give(process, self.handed)
        return process

    def hand(self, line: str) -> None:
        self.handed = line
        for process in self.processes:
            self.give(process, line)

    @staticmethod
    def give(worker: subprocess.Popen, line: str) -> None:
        """Give a worker its launch context; one that already died is replaced by supervise()."""
        try:
            worker.stdin.write(line)
            worker.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def supervise(self, work_remains: Callable[[], bool]) -> bool:
        """Replace the workers that died (killed, out of memory) while work remains; False once
        every worker has ended."""
        for i, process in enumerate(self.processes):
            code = process.poll()
            if code in (None, 0, 130, EXIT_GAVE_UP) or not work_remains():
                continue
            self.restarts[i] += 1
            if self.restarts[i] > MAX_WORKER_RESTARTS:
                raise SweeperError(
                    f"worker w{i} keeps failing (exit code {code}, {self.restarts[i]} starts);"
                    " its error is printed above"
                )
            self.processes[i] = self.start(i)
        return self.running() > 0

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking as soon as a worker ends (the launch goes on at once)."""
        end, running = time.monotonic() + seconds, self.running()
        while time.monotonic() < end and self.running() == running:
            time.sleep(0.05)

    def running(self) -> int:
        return sum(process.poll() is None for process in self.processes)

    def all_gave_up(self) -> bool:
        return all(process.returncode == EXIT_GAVE_UP for process in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait()


def _work_remains(
    study: optuna.Study, budget: int | None, deadline: float | None, stop: StopRule | None
) -> bool:
    return budget_state(study, budget, stop) != Budget.DONE and (
        deadline is None or time.time() < deadline
    )
