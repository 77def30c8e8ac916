"""What the tests share: the paths, a `sweeper` command runner, ports, and /proc helpers."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

from sweeper.storage import make_storage

REPO = Path(__file__).resolve().parents[1]
SWEEPER = str(Path(sys.executable).parent / "sweeper")
QUICKSTART = str(REPO / "studies" / "quickstart.py")


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


def processes_mentioning(text: str) -> list[int]:
    """The ids of the processes whose command line contains `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_text():
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return found
