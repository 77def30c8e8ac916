"""sweeper.run_study, in this process as in a notebook: the launch, its result as objects, a
Study made in Python, and an interrupt that keeps the checkpoints."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART

import sweeper
from sweeper import Study, SweeperError
from sweeper.interrupt import STOPPING

MODULE = """
from torch import nn


def net(width, num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def space(trial):
    return {"model": net, "width": trial.suggest_int("width", 4, 8), "batch_size": 64}
"""


def test_run_study_returns_the_trials_the_best_the_ensemble_and_the_files(
    tmp_path: Path, datasets_dir: Path
) -> None:
    result = sweeper.run_study(QUICKSTART, workers=2, trials=2, epochs=1, train_size=500,
                               val_size=500, data_dir=datasets_dir, dir=tmp_path)  # fmt: skip
    assert result.exit_code == 0
    assert list(result.trials["trial"]) and len(result.trials) == 2
    assert set(result.trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert isinstance(result.best, optuna.trial.FrozenTrial)
    assert result.best.number == result.trials["trial"].iloc[0]  # best first
    assert 0 < result.ensemble_test_acc < 1
    assert sorted(p.suffix for p in result.exports) == [".onnx", ".pt"]
    assert all(p.is_file() for p in result.exports)
    assert result.report is not None and result.report.is_file()
    assert result.ui == f"sweeper ui --dir {tmp_path}"
    assert "ensemble test accuracy" in repr(result)


def test_a_study_made_in_python_reaches_the_workers_through_a_written_file(
    tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"nbnets_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    nets = importlib.import_module(name)
    study = Study(name="made here", space=nets.space, fixed={"val_size": 500}, trials=1,
                  ensemble={})  # fmt: skip
    result = sweeper.run_study(study, workers=1, epochs=1, train_size=500,
                               data_dir=datasets_dir, dir=tmp_path / "sweep")  # fmt: skip
    assert result.exit_code == 0 and len(result.trials) == 1
    assert result.best.user_attrs["config"]["model"] == f"{name}:net"
    written = tmp_path / "sweep" / "studies" / "made_here.py"
    assert f"resolve('{name}:space', 'space')" in written.read_text()
    sys.modules.pop(name, None)

    with pytest.raises(SweeperError, match="not a function defined at the top of a file"):
        sweeper.run_study(Study(name="x", space=lambda t: {}), dir=tmp_path / "sweep")
    sampler = optuna.samplers.TPESampler(seed=1)
    with pytest.raises(SweeperError, match="give it by name"):
        sweeper.run_study(Study(name="y", space=nets.space, sampler=sampler), dir=tmp_path)
    with pytest.raises(SweeperError, match=r"^run_study: val_size=1.5 is invalid; give a fraction"):
        sweeper.run_study(QUICKSTART, val_size=1.5, dir=tmp_path / "unmade")
    assert not (tmp_path / "unmade").exists()  # refused before anything is made


def test_interrupting_the_kernel_stops_the_workers_and_keeps_their_checkpoints(
    tmp_path: Path, datasets_dir: Path
) -> None:
    checkpoints = tmp_path / "checkpoints" / "quickstart"

    def interrupt_after_an_epoch() -> None:
        deadline = time.time() + 300
        while not list(checkpoints.glob("trial-*-last.pt")) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # what the notebook's stop button sends

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt_after_an_epoch, daemon=True).start()
    result = sweeper.run_study(QUICKSTART, workers=1, trials=1, epochs=3, train_size=3000,
                               val_size=500, data_dir=datasets_dir, dir=tmp_path,
                               progress=False)  # fmt: skip
    assert result.exit_code == 130
    assert list(checkpoints.glob("trial-*-last.pt"))  # kept for the next run
    assert signal.getsignal(signal.SIGINT) is before and not STOPPING.is_set()
    again = sweeper.run_study(QUICKSTART, workers=1, trials=1, epochs=3, train_size=3000,
                              val_size=500, data_dir=datasets_dir, dir=tmp_path,
                              ensemble=False)  # fmt: skip
    assert again.exit_code == 0
    assert again.best.user_attrs["resumed_from_epoch"] >= 1
