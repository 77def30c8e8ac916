"""One phase of a launch on the pool: the sweep's trials, or the ensemble's members. The
launcher says what every worker runs (their `sweeper worker` command lines), whether work
remains (the budget, the deadline, the stop rule) and what it does while it waits (the progress
bar, the trials' figures): the pool's supervisor calls them back."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper.errors import SweeperError
from sweeper.pool.interface import LaunchContext, Pool
from sweeper.pool.supervisor import supervise
from sweeper.spec.budget import Budget, budget_state
from sweeper.spec.stopping import StopRule
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import backend_of
from sweeper.sweep.progress import Progress


@dataclass
class Work:
    """What a phase trains: the Optuna study (opened once the workers start), and until when."""

    budget: int | None
    deadline: float | None = None  # time.time() after which no trial starts
    stop: StopRule | None = None

    def remains(self, study: optuna.Study) -> bool:
        return budget_state(study, self.budget, self.stop) != Budget.DONE and (
            self.deadline is None or time.time() < self.deadline
        )


@dataclass
class Opened:
    """What a launch opened while its workers started."""

    study: optuna.Study
    context: LaunchContext
    figures: Any  # a tracking.figures.FigureDrawer: finished trials' figures, while workers run
    freeing: Any = None  # a retention.FreeingWhileRunning: their disk, while workers run

    def tend(self, study: optuna.Study, trials: list | None = None, final: bool = False) -> None:
        """At every poll: the finished trials' figures, and the disk they no longer need."""
        self.figures(study, trials=trials, final=final)
        if trials is not None and self.freeing is not None:
            self.freeing(study, trials)


def stopped(study: optuna.Study, budget: int | None, what: str) -> str:
    """The one line of a launch stopped by Ctrl-C: what was kept and how to go on."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    again = shlex.join(["sweeper", *sys.argv[1:]])
    resumed = f"; the {waiting} cut short resume from their last epoch" if waiting else ""
    return (f"sweeper: stopped; {done}{f' of {budget}' if budget else ''} {what} done and kept"
            f"{resumed}; go on with: {again}")  # fmt: skip


def run_phase(
    pool: Pool,
    commands: list[list[str]],
    setup: Callable[[], tuple[optuna.Study, LaunchContext]],
    work: Work,
    *,
    progress: bool,
    table: bool = True,
    figures: Callable[..., None] | None = None,
) -> bool:
    """Run the phase's workers until the work is done (then print the trials table unless not
    `table`); False if interrupted (Ctrl-C, SIGTERM). `figures(study)` draws finished trials'
    figures at every poll, and `figures(study, final=True)` once the phase is done."""
    opened: dict[str, Any] = {}

    def start() -> LaunchContext:
        study, context = setup()
        opened["study"], opened["bar"] = study, Progress(study, work.budget, enabled=progress)
        return context

    def draw() -> None:  # after the bar's update, whose read of the trials it shares
        if figures is not None:
            figures(opened["study"], trials=opened["bar"].trials)

    try:
        done = supervise(pool, commands, start, lambda: work.remains(opened["study"]),
                         each_poll=[lambda: opened["bar"].update(), draw],
                         on_interrupt=lambda: release(opened.get("study")))  # fmt: skip
    finally:
        if "bar" in opened:
            opened["bar"].close()
    if done and figures is not None:
        figures(opened["study"], final=True)
    if done and table:
        opened["bar"].summary()
    if done and pool.slots.all_gave_up():
        raise SweeperError("every worker gave up after failed trials; their errors are above")
    return done


def release(study: optuna.Study | None) -> None:
    """Close this thread's session of the study's storage: a transaction that Ctrl-C cut in the
    middle would hold SQLite's lock while the stopping workers wait for it."""
    backend = backend_of(study._storage) if study is not None else None
    if hasattr(backend, "remove_session"):
        backend.remove_session()


def worker_flags(
    pool: Pool, budget: int | None, deadline: float | None, overrides: dict[str, Any]
) -> list[str]:
    """The `sweeper worker` flags every worker of one phase shares."""
    flags = ["--from-launcher", "--threads", str(pool.threads)]
    if pool.packed:
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
