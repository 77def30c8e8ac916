"""Local workers forked from one server process that imported torch, MLflow and Optuna once
(multiprocessing's fork server), instead of each worker importing them anew: about 5 CPU
seconds a worker start, paid again by every restart and every ensemble phase.

The server imports but never touches a GPU, so each forked worker initialises CUDA on its own
device as a new process would. A forked worker behaves as `python -m module args` or
`python -c code args` started from the launcher: the launcher's working folder and environment
at the time it starts, that command line in `ps` (setproctitle), its launch context on stdin."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import subprocess
import sys
import types
import warnings
from typing import Any

from setproctitle import setproctitle

from sweeper.errors import SweeperError

# torch.optim imports dynamo at its first step; a worker's first MLflow client on a SQLite store,
# and Optuna's RDB storage, import the rest (a CPU second a worker, sixteen at once otherwise).
PRELOAD = ["sweeper.worker.loop", "torch._dynamo", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.tracking.sqlalchemy_workspace_store", "alembic.command", "alembic.config",
           "alembic.migration", "alembic.script"]  # fmt: skip
FORKS = multiprocessing.get_context("forkserver")


def warm_up() -> None:
    """Start the fork server's imports now, so that they overlap the launcher's own start."""
    FORKS.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def end_before_exit() -> None:
    """Kill the fork server once every worker has ended, as this process exits: left to end by
    itself, it would spend a CPU second or more tearing torch and MLflow down."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # private; Python 3.4-3.14
    if pid:
        os.kill(pid, signal.SIGKILL)


class Forked:
    """A command of this Python (`[sys.executable, "-m" | "-c", target, *args]`) run in a child
    of the fork server; the supervisor sees it as it sees a subprocess.Popen."""

    def __init__(self, command: list[str]) -> None:
        if command[0] != sys.executable or command[1] not in ("-m", "-c"):
            raise ValueError(f"not a command of this Python: {command[:2]}")
        warm_up()
        reader, self.writer = FORKS.Pipe(duplex=False)
        self.process = FORKS.Process(target=run, args=(command, dict(os.environ), reader))
        main = sys.modules["__main__"]
        # multiprocessing would run the launcher's main script again in the child, as its spawn
        # rule does (a script that launches a study would launch it again): hide it.
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.process.start()
        except (EOFError, ConnectionError) as error:  # it died importing (a broken install)
            raise SweeperError(
                "the workers' fork server ended before it started a worker; its error is above"
            ) from error
        finally:
            sys.modules["__main__"] = main
        reader.close()
        self.pid = self.process.pid
        self.returncode: int | None = None

    def give(self, line: str) -> None:
        """Hand the worker its launch context (what it reads on stdin); one that already died
        is started again by the supervisor."""
        with contextlib.suppress(OSError):
            self.writer.send(line)
        self.writer.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class HandedStdin:
    """The forked worker's stdin: the line the launcher gives, then end of file."""

    def __init__(self, reader: multiprocessing.connection.Connection) -> None:
        self.reader = reader

    def readline(self) -> str:
        try:
            return self.reader.recv()
        except EOFError:  # the launcher ended before it handed anything
            return ""


def run(command: list[str], environ: dict[str, Any], reader: Any) -> None:
    """In the forked child: become the process `command` would have started."""
    setproctitle(" ".join(command))
    os.environ.clear()
    os.environ.update(environ)
    sys.stdin = HandedStdin(reader)
    flag, target, *args = command[1:]
    if flag == "-m":
        # The module may be imported already (sweeper.cli is): run it again, as `-m` does.
        warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
        sys.argv = [target, *args]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
