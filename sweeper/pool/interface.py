"""What the launcher and its workers share, and the pool's interface.

The launcher starts one `sweeper worker` process per slot and hands each a LaunchContext on its
stdin; a worker's exit code tells the supervisor whether to start it again. A Pool is where
those processes run: local processes (pool.local) or Ray actors (pool.ray), chosen once per
command; the supervisor (pool.supervisor) runs each phase of a launch on it. Worker-side code
imports this module and nothing else of the pool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TextIO

from sweeper.errors import SweeperError
from sweeper.interrupt import EXIT_INTERRUPTED

EXIT_GAVE_UP = 3  # a worker's exit code after too many failed trials in a row: not restarted
MAX_WORKER_RESTARTS = 5  # a worker that dies more often than this is broken, not unlucky


@dataclass
class LaunchContext:
    """What a launcher hands each of its workers on stdin once it has made them: the MLflow ids,
    and the stores' URLs, which may hold passwords and so never go on a worker's command line
    (where `ps` shows them to every user)."""

    experiment_id: str | None = None  # the MLflow experiment of the study
    parent_run_id: str | None = None  # the launch run the trial runs hang under
    storage_url: str | None = None  # the Optuna storage
    tracking_uri: str | None = None  # the MLflow store
    keep: int | None = None  # only trials that end in the top `keep` store their best weights

    def line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def read(cls, stream: TextIO) -> LaunchContext:
        line = stream.readline()
        if not line:
            raise SweeperError("the launcher stopped before it handed over the MLflow launch run")
        return cls(**json.loads(line))


class Process(Protocol):
    """A worker process, as the supervisor sees it (a subprocess.Popen, or a Ray actor's)."""

    returncode: int | None

    def poll(self) -> int | None: ...


@dataclass
class Slots:
    """The worker processes of one phase, one per slot: started through `spawn`, handed the
    launch context through `give`, started again when they die while work remains."""

    spawn: Callable[[int], Process]  # slot -> a started worker
    give: Callable[[Any, str], None]  # (process, context line): hand a worker its context
    count: int
    handed: str = ""  # the context line, once the launcher made it
    processes: list[Process] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.processes = [self.spawn(i) for i in range(self.count)]
        self.restarts = [0] * self.count

    @classmethod
    def none(cls) -> Slots:
        """Before the first phase: no worker."""
        return cls(lambda _: None, lambda _, __: None, 0)

    def hand(self, line: str) -> None:
        self.handed = line
        for process in self.processes:
            self.give(process, line)

    def supervise(self, work_remains: Callable[[], bool]) -> bool:
        """Start again the workers that died (killed, out of memory) while work remains; False
        once every worker has ended."""
        for i, process in enumerate(self.processes):
            code = process.poll()
            if code in (None, 0, EXIT_INTERRUPTED, EXIT_GAVE_UP) or not work_remains():
                continue
            self.restarts[i] += 1
            if self.restarts[i] > MAX_WORKER_RESTARTS:
                raise SweeperError(
                    f"worker w{i} keeps failing (exit code {code}, {self.restarts[i]} starts);"
                    " its error is printed above"
                )
            self.processes[i] = self.spawn(i)
            if self.handed:
                self.give(self.processes[i], self.handed)
        return self.running() > 0

    def running(self) -> int:
        return sum(process.poll() is None for process in self.processes)

    def all_gave_up(self) -> bool:
        return all(process.returncode == EXIT_GAVE_UP for process in self.processes)


class Pool(Protocol):
    """Where the workers of a launch run. Each phase (the sweep, the ensemble's members) starts
    one worker per slot, is supervised through `slots` and ends with stop()."""

    devices: list[str]  # the device of each worker slot
    packed: bool  # several workers share each GPU
    threads: int  # CPU threads of each worker
    local: bool  # the workers run on this machine (its GPUs are the launcher's too)
    slots: Slots  # the workers of the phase running now

    def start(self, commands: list[list[str]]) -> None:
        """Start one worker per command (one per slot, in the order of `devices`)."""

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`; return early once a worker has ended, where that is cheap."""

    def stop(self) -> None:
        """Stop every worker still running (each puts its trial back in the queue); let go of
        whatever the phase held."""
