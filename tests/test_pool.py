"""The pool's supervisor and local pool, with stand-in workers: short Python processes that read
their launch context on stdin and exit as told. No torch, no stores: seconds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweeper.errors import SweeperError
from sweeper.pool import local, supervisor
from sweeper.pool.interface import EXIT_GAVE_UP, MAX_WORKER_RESTARTS, LaunchContext
from sweeper.pool.local import LocalPool
from sweeper.records import Attr
from sweeper.stores.paths import SweepPaths
from sweeper.sweep.phase import Work, run_phase, worker_commands, worker_flags

CONTEXT = LaunchContext("7", "run-1", "sqlite:///x.db", "sqlite:///m.db")


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "POLL_S", 0.05)


def stand_in(out: Path, exits: list[int], sleep: float = 0.0) -> list[str]:
    """A worker that appends the context it read to `out`, sleeps, and exits with exits[n] on
    its n-th start (the last one after that)."""
    code = f"""
import sys, time, pathlib
out = pathlib.Path({str(out)!r})
line = sys.stdin.readline()
with out.open("a") as f:
    f.write(line)
starts = len(out.read_text().splitlines())
time.sleep({sleep})
exits = {exits!r}
sys.exit(exits[min(starts, len(exits)) - 1])
"""
    return [sys.executable, "-c", code]


def test_every_worker_reads_the_one_context_the_launcher_made(tmp_path: Path) -> None:
    outs = [tmp_path / f"w{i}" for i in range(3)]
    made = []

    def setup() -> LaunchContext:
        made.append(time.monotonic())
        return CONTEXT

    pool = LocalPool(["cpu"] * 3)
    assert supervisor.supervise(pool, [stand_in(o, [0]) for o in outs], setup, lambda: True)
    assert len(made) == 1
    for out in outs:
        assert LaunchContext(**json.loads(out.read_text())) == CONTEXT


def test_a_dead_worker_is_started_again_while_work_remains(tmp_path: Path) -> None:
    out = tmp_path / "w0"
    pool = LocalPool(["cpu"])
    assert supervisor.supervise(pool, [stand_in(out, [1, -9 % 256, 0])], lambda: CONTEXT,
                                lambda: True)  # fmt: skip
    assert out.read_text().splitlines() == [CONTEXT.line().strip()] * 3  # each start got it
    assert pool.slots.restarts == [2]


def test_a_dead_worker_is_not_replaced_once_the_work_is_done(tmp_path: Path) -> None:
    out = tmp_path / "w0"
    pool = LocalPool(["cpu"])
    assert supervisor.supervise(pool, [stand_in(out, [1, 0])], lambda: CONTEXT, lambda: False)
    assert len(out.read_text().splitlines()) == 1


def test_a_worker_that_keeps_dying_stops_the_pool(tmp_path: Path) -> None:
    out = tmp_path / "w0"
    pool = LocalPool(["cpu"])
    with pytest.raises(SweeperError, match=r"worker w0 keeps failing \(exit code 1"):
        supervisor.supervise(pool, [stand_in(out, [1])], lambda: CONTEXT, lambda: True)
    assert len(out.read_text().splitlines()) == MAX_WORKER_RESTARTS + 1


def test_workers_that_gave_up_are_not_started_again(tmp_path: Path) -> None:
    pool = LocalPool(["cpu"] * 2)
    commands = [stand_in(tmp_path / f"w{i}", [EXIT_GAVE_UP]) for i in range(2)]
    assert supervisor.supervise(pool, commands, lambda: CONTEXT, lambda: True)
    assert pool.slots.all_gave_up() and pool.slots.restarts == [0, 0]
    one_gave_up = [stand_in(tmp_path / "a", [EXIT_GAVE_UP]), stand_in(tmp_path / "b", [0])]
    assert supervisor.supervise(pool, one_gave_up, lambda: CONTEXT, lambda: True)
    assert not pool.slots.all_gave_up()


def test_a_phase_whose_workers_all_gave_up_prints_its_table_then_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.FAIL_REASON: "disk"}))
    commands = [stand_in(tmp_path / "w0", [EXIT_GAVE_UP])]
    with pytest.raises(SweeperError, match="every worker gave up"):
        run_phase(LocalPool(["cpu"]), commands, lambda: (study, CONTEXT), Work(budget=3),
                  progress=False)  # fmt: skip
    assert "FAIL" in capsys.readouterr().out  # the trials table came first


def test_each_poll_runs_while_workers_run_and_once_after(tmp_path: Path) -> None:
    polls: list[int] = []
    pool = LocalPool(["cpu"])
    count = [lambda: polls.append(pool.slots.running())]
    supervisor.supervise(pool, [stand_in(tmp_path / "w0", [0], sleep=0.5)], lambda: CONTEXT,
                         lambda: True, each_poll=count)  # fmt: skip
    assert polls[-1] == 0 and len(polls) >= 3 and 1 in polls


def test_an_interrupt_stops_every_worker_and_returns_false(tmp_path: Path) -> None:
    pool = LocalPool(["cpu"] * 2)
    commands = [stand_in(tmp_path / f"w{i}", [0], sleep=60) for i in range(2)]

    def interrupt() -> None:
        if all(p.poll() is None for p in pool.slots.processes):
            raise KeyboardInterrupt

    released = []

    def on_interrupt() -> None:  # before the workers are stopped, and outside the except
        released.append([p.poll() for p in pool.slots.processes])
        assert sys.exc_info() == (None, None, None)

    started = time.monotonic()
    assert not supervisor.supervise(pool, commands, lambda: CONTEXT, lambda: True,
                                    each_poll=[interrupt], on_interrupt=on_interrupt)  # fmt: skip
    assert time.monotonic() - started < 30
    assert [p.poll() for p in pool.slots.processes] == [-15, -15]  # SIGTERM, then reaped
    assert released == [[None, None]]


def test_a_worker_that_ignores_sigterm_is_killed_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(local, "STOP_WAIT_S", 0.5)
    stuck = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
             " sys.stdin.readline(); time.sleep(60)")  # fmt: skip
    pool = LocalPool(["cpu"])
    pool.start([[sys.executable, "-c", stuck]])
    time.sleep(1)  # it has set its handler
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 10
    assert pool.slots.processes[0].returncode == -9
    assert "worker w0 did not stop within 0.5 s: killed" in capsys.readouterr().err


class StartsFirst(LocalPool):
    """A pool whose workers start before the stores open, as Ray actors do."""

    local = False


@pytest.mark.parametrize("pool_class", [LocalPool, StartsFirst])
def test_a_failed_setup_leaves_no_worker_running(tmp_path: Path, pool_class: type) -> None:
    pool = pool_class(["cpu"])

    def setup() -> LaunchContext:
        raise SweeperError("cannot open the study")

    with pytest.raises(SweeperError, match="cannot open the study"):
        supervisor.supervise(pool, [stand_in(tmp_path / "w0", [0], sleep=60)], setup,
                             lambda: True)  # fmt: skip
    assert all(process.poll() is not None for process in pool.slots.processes)
    assert len(pool.slots.processes) == (0 if pool.local else 1)  # a local pool forks after


def test_the_local_pool_shares_the_cpu_and_packs_shared_gpus(tmp_path: Path) -> None:
    assert not LocalPool(["cpu", "cpu"]).packed
    assert LocalPool(["cuda:0", "cuda:0", "cuda:1", "cuda:1"]).packed
    assert not LocalPool(["cuda:0", "cuda:1"]).packed
    assert LocalPool(["cpu"] * 64).threads == 1
    pool = LocalPool(["cuda:0", "cuda:0"])
    flags = worker_flags(pool, 10, 123.0, {"epochs": 2, "train_size": 500})
    assert flags[:2] == ["--from-launcher", "--threads"] and "--packed" in flags
    assert flags[flags.index("--trials") + 1] == "10"
    assert flags[-4:] == ["--epochs", "2", "--train-size", "500"]
    paths = SweepPaths(tmp_path, "sqlite:///secret", "sqlite:///secret", None)
    commands = worker_commands("studies/x.py", paths, pool.devices, flags)
    assert [c[c.index("--device") + 1] for c in commands] == ["cuda:0", "cuda:0"]
    assert [c[c.index("--worker-name") + 1] for c in commands] == ["w0", "w1"]
    assert not any("secret" in part for c in commands for part in c)  # URLs go on stdin
