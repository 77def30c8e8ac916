"""End to end: Ctrl-C at a launch keeps its running trial for the next launch, over SQLite and
PostgreSQL (the `store` fixture) and at a terminal (the whole process group). A file of its own
so that pytest-xdist runs it beside test_resume.py."""

import os
import signal
from collections.abc import Callable
from pathlib import Path

from helpers import FINISHED, Store, first_epoch_checkpoint, start_launch, stop_line


def test_ctrl_c_keeps_the_running_trial_for_the_next_launch(
    tmp_path: Path, datasets_dir: Path, store: Callable[[Path], Store]
) -> None:
    storage = store(tmp_path)
    launcher = start_launch(tmp_path, storage, datasets_dir, "--trials", "2")
    first_epoch_checkpoint(tmp_path, launcher)
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err[-3000:]
    assert stop_line(err).startswith("sweeper: stopped;"), err[-3000:]
    trials = storage.load().get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    (waiting,) = [t for t in trials if t.state.name == "WAITING"]
    interrupted = waiting.system_attrs["failed_trial"]
    assert (tmp_path / "checkpoints" / "quickstart" / f"trial-{interrupted}-last.pt").exists()
    again = start_launch(tmp_path, storage, datasets_dir, "--trials", "2")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    trials = storage.load().get_trials()
    (resumed,) = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted]
    assert resumed.state.name in FINISHED
    assert resumed.user_attrs["resumed_from_epoch"] >= 1
    assert len([t for t in trials if t.state.name in FINISHED]) == 2
    assert list((tmp_path / "checkpoints" / "quickstart").iterdir()) == []  # both tries' dropped


def test_ctrl_c_at_a_terminal_stops_quietly_and_the_cut_trial_resumes(
    tmp_path: Path, datasets_dir: Path
) -> None:
    """Ctrl-C at a terminal signals the launcher and its workers at once (their process group),
    and each worker gets its launcher's SIGTERM too, often before Python ran the first one's
    handler: one line says what was kept (no traceback), the trial is interrupted, not failed,
    and the next launch resumes it."""
    storage = Store("sqlite", f"sqlite:///{tmp_path / 'optuna.db'}", ())  # the default
    launcher = start_launch(tmp_path, storage, datasets_dir, "--trials", "2", group=True)
    try:
        first_epoch_checkpoint(tmp_path, launcher)
        os.killpg(launcher.pid, signal.SIGINT)
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130, err[-3000:]
    assert stop_line(err).startswith("sweeper: stopped; 0 of 2 trials done and kept; the 1 cut")
    (cut,) = [t for t in storage.load().trials if t.state.name == "FAIL"]
    assert out.splitlines()[-1] == f"trial {cut.number} INTERRUPTED value=-"
    again = start_launch(tmp_path, storage, datasets_dir, "--trials", "2")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    trials = storage.load().trials
    (resumed,) = [t for t in trials if t.system_attrs.get("failed_trial") == cut.number]
    assert resumed.state.name in FINISHED and resumed.user_attrs["resumed_from_epoch"] >= 1
