"""What the tests share: the paths, a `sweeper` command runner, ports, /proc helpers and headless
Chromium."""

from __future__ import annotations

import contextlib
import io
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from sweeper import cli, interrupt
from sweeper.stores.storage import make_storage

REPO = Path(__file__).resolve().parents[1]
SWEEPER = str(Path(sys.executable).parent / "sweeper")
QUICKSTART = str(REPO / "studies" / "quickstart.py")
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--proxy-server=127.0.0.1:9",  # nothing may come from the network (127.0.0.1 may)
            "--hide-scrollbars"]  # fmt: skip


SMALL = ["--epochs", "2", "--train-size", "1000", "--val-size", "500",
         "--no-progress", "--no-ensemble"]  # fmt: skip
TINY = ["--epochs", "1", "--train-size", "500", "--val-size", "500",
        "--no-progress", "--no-ensemble"]  # fmt: skip
FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class Store:
    """An Optuna storage that launch tests run on, and the flags that name it to `sweeper`."""

    kind: str
    url: str
    flags: tuple[str, ...]  # () for the embedded SQLite default of the --dir

    def load(self, study_name: str = "quickstart") -> optuna.Study:
        return optuna.load_study(study_name=study_name, storage=make_storage(self.url))


def sweeper(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the `sweeper` command to its end; its output is captured as text."""
    return subprocess.run(
        [SWEEPER, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def launch(sweep_dir: Path, store: Store, data_dir: Path, *args: str):
    """`sweeper launch studies/quickstart.py` into sweep_dir, on the store, to its end, run in
    this process (sweeper_here)."""
    return sweeper_here("launch", QUICKSTART, "--dir", str(sweep_dir), *store.flags,
                        "--data-dir", str(data_dir), *args)  # fmt: skip


def sweeper_here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sweeper ARGS` run in this process (no interpreter to start, torch already loaded), as
    `sweeper` would: its exit code and what it printed. Whatever a command changes of the
    process (signal handlers, the interrupt flag) is put back. A launch's workers fork from this
    process's fork server, started by its first launch and kept for the next (a command line's
    launcher ends its own): what it saves is the interpreter, the imports of the launcher and
    those of its fork server, about 8 CPU seconds a launch. Tests of signals, killed processes
    and the launcher's exit run the `sweeper` command instead."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            pytest.MonkeyPatch.context() as patch,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            for name, value in (env or {}).items():  # the variables it sets, for this command
                patch.setenv(name, value)
            try:
                code = cli.main(list(args))
            except SystemExit as exit:  # argparse's usage errors
                code = exit.code
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        interrupt.STOPPING.clear()
    return subprocess.CompletedProcess(["sweeper", *args], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    """The ids of a process's children, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def command_line(pid: int) -> str:
    """A process's command line, its arguments joined by spaces (as `ps` shows it; a worker
    forked from the fork server sets it whole, setproctitle); "" once it ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def workers_of(launcher: int) -> list[int]:
    """The ids of a local launch's `sweeper worker` processes (children of its fork server)."""
    return [pid for pid in descendants(launcher) if "sweeper.cli worker " in command_line(pid)]


def processes_mentioning(text: str) -> list[int]:
    """The ids of the processes whose command line contains `text`."""
    pids = [int(path.name) for path in Path("/proc").glob("[0-9]*")]
    return [pid for pid in pids if text in command_line(pid)]


def descendants(pid: int) -> list[int]:
    """The ids of a process's children, their children, and so on."""
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def first_epoch_checkpoint(sweep_dir: Path, launcher: subprocess.Popen,
                           study: str = "quickstart") -> int:  # fmt: skip
    """Wait until a trial of the launch is past its first epoch; return its number."""
    checkpoints = sweep_dir / "checkpoints" / study
    deadline = time.time() + 300
    while not list(checkpoints.glob("trial-*-last.pt")):
        assert time.time() < deadline and launcher.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    return int(next(checkpoints.glob("trial-*-last.pt")).name.split("-")[1])


def running(pid: int) -> bool:
    """Whether the process is there and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def chromium(
    page: Path | str, profile: Path, *args: str, budget_ms: int = 5000
) -> subprocess.CompletedProcess:
    """Headless Chromium on a file or a URL, its scripts given `budget_ms` of virtual time."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    target = page.as_uri() if isinstance(page, Path) else page
    command = [binary, *CHROMIUM, f"--virtual-time-budget={budget_ms}",
               f"--user-data-dir={profile}", *args, target]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def start_launch(
    sweep_dir: Path, storage: Store, data_dir: Path, *args: str, env=None, group: bool = False
):
    """A launch of 3 epochs on 1 worker; `group`: in a process group of its own, as a terminal
    starts it (Ctrl-C signals the whole group)."""
    command = [SWEEPER, "launch", QUICKSTART, "--dir", str(sweep_dir), *storage.flags,
               "--workers", "1", "--epochs", "3", "--train-size", "3000",
               "--val-size", "500", "--no-progress",
               "--no-ensemble", "--data-dir", str(data_dir), *args]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=group)  # fmt: skip


def stop_line(err: str) -> str:
    """The launcher's one line on stderr after Ctrl-C. Nothing else may be there but the report
    Python itself prints when the interrupt lands in a garbage-collection callback ("Exception
    ignored in", rare): the training loop then notices the stop at its next batch."""
    *before, line = err.strip().splitlines() or [""]
    assert not before or before[0].startswith("Exception ignored in"), err[-3000:]
    return line
