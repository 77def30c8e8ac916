"""What the CUDA tests share: `sweeper` as a module of this Python, sweeps read back, and the
command lines of running workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.stores.storage import make_storage

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "studies" / "quickstart.py")
OOM_STUDY = str(Path(__file__).resolve().parent / "oom_study.py")
SWEEPER = [sys.executable, "-m", "sweeper.cli"]  # works installed or not (PYTHONPATH)
FINISHED = ("COMPLETE", "PRUNED")


def sweeper(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `sweeper` to its end; its output is captured as text."""
    return subprocess.run([*SWEEPER, *args], capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    """Start `sweeper` in the background; its output is captured as text."""
    return subprocess.Popen([*SWEEPER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def trials(sweep_dir: Path, study_name: str) -> list[optuna.trial.FrozenTrial]:
    storage = make_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    return optuna.load_study(study_name=study_name, storage=storage).get_trials()


def runs(sweep_dir: Path, study_name: str) -> pd.DataFrame:
    """The trial runs of a study in the sweep's MLflow store, in trial order."""
    return tracking.runs_of_study(default_tracking_uri(sweep_dir), study_name)


def worker_command_lines(sweep_dir: Path) -> list[list[str]]:
    """The argv of every running `sweeper worker` of this sweep directory, from /proc."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            # a forked worker's title is its command line joined by spaces (setproctitle)
            argv = path.read_bytes().decode().replace("\0", " ").split()
        except (OSError, UnicodeDecodeError):  # the process ended meanwhile
            continue
        if "worker" in argv and str(sweep_dir) in argv:
            found.append(argv)
    return found


def wait_for_workers(sweep_dir: Path, count: int, launcher: subprocess.Popen) -> list[list[str]]:
    """The command lines of `count` workers of a launch, once they all run."""
    deadline = time.time() + 120
    while len(commands := worker_command_lines(sweep_dir)) < count:
        if launcher.poll() is not None or time.time() > deadline:
            launcher.terminate()
            _, err = launcher.communicate(timeout=60)
            raise AssertionError(
                f"{len(commands)} of {count} workers seen; launcher:\n{err[-3000:]}"
            )
        time.sleep(0.1)
    return commands


def flag_values(argv: list[str]) -> dict[str, str | bool]:
    """`--name value` pairs of a command line; a flag without a value maps to True."""
    values: dict[str, str | bool] = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            values[token] = True if following.startswith("--") else following
    return values
