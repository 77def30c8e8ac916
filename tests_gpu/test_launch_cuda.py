"""Real `sweeper launch` processes on the GPU: a trial on CUDA, workers pinned to GPU slots,
several trials packed on one GPU, and a packed trial that ran out of memory rerun alone."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import optuna
import torch
from gpu_helpers import (
    FINISHED,
    OOM_STUDY,
    QUICKSTART,
    flag_values,
    runs,
    start,
    sweeper,
    trials,
    wait_for_workers,
)

from sweeper.errors import SweeperError
from sweeper.pool.local import LocalPool, default_devices
from sweeper.stores.paths import SweepPaths
from sweeper.sweep.phase import worker_flags
from sweeper.worker.gpuslot import gpu_slot

QUIET = ["--no-progress", "--no-ensemble"]
LEAVE_FREE = 4 * 2**30  # bytes the OOM test leaves: a worker's CUDA context fits, its trial not


def launch_args(sweep_dir: Path, datasets_dir: Path, study: str = QUICKSTART) -> list[str]:
    return ["launch", study, "--dir", str(sweep_dir), "--data-dir", str(datasets_dir), *QUIET]


def test_default_devices_are_the_visible_gpus() -> None:
    gpus = torch.cuda.device_count()
    assert default_devices(None, 1) == [f"cuda:{i}" for i in range(gpus)], (
        "sweeper.pool.local finds GPUs through the driver files in GPU_DRIVER_FILES; none is here"
    )


def test_a_trial_trains_on_cuda(tmp_path: Path, datasets_dir: Path) -> None:
    done = sweeper(*launch_args(tmp_path, datasets_dir), "--workers", "1", "--trials", "2",
                   "--epochs", "1", "--train-size", "2000")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    finished = trials(tmp_path, "quickstart")
    assert [t.state.name in FINISHED for t in finished] == [True, True]
    assert {t.user_attrs["config"]["device"] for t in finished} == {"cuda:0"}
    tagged = runs(tmp_path, "quickstart")
    assert list(tagged["tags.sweeper.device"]) == ["cuda:0", "cuda:0"]
    assert (tagged["metrics.images_per_s"] > 0).all()


def test_two_workers_are_pinned_to_two_gpu_slots(tmp_path: Path, datasets_dir: Path) -> None:
    gpus = torch.cuda.device_count()
    devices = default_devices(2, 1)
    assert devices == [f"cuda:{i % gpus}" for i in range(2)]  # one GPU: both slots are cuda:0
    done = sweeper(*launch_args(tmp_path, datasets_dir), "--workers", "2", "--trials", "4",
                   "--epochs", "2", "--train-size", "5000")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(t.state.name in FINISHED for t in trials(tmp_path, "quickstart"))
    tagged = runs(tmp_path, "quickstart")
    assert len(tagged) == 4
    assert set(tagged["tags.sweeper.worker"]) == {"w0", "w1"}, "one worker ran every trial"
    for worker, device in zip(tagged["tags.sweeper.worker"], tagged["tags.sweeper.device"],
                              strict=True):  # fmt: skip
        assert device == devices[int(worker.removeprefix("w"))]


def test_four_trials_share_one_gpu(tmp_path: Path, datasets_dir: Path) -> None:
    devices = default_devices(4, 4)
    assert devices == ["cuda:0"] * 4
    overrides = {"epochs": 1, "train_size": 2000, "data_dir": str(datasets_dir)}
    expected = flag_values(worker_flags(LocalPool(devices), 8, None, overrides))
    assert expected["--packed"] is True
    launcher = start(*launch_args(tmp_path, datasets_dir), "--trials-per-gpu", "4", "--workers",
                     "4", "--trials", "8", "--epochs", "1", "--train-size", "2000")  # fmt: skip
    commands = wait_for_workers(tmp_path, 4, launcher)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    for command in commands:
        flags = flag_values(command)
        assert flags["--device"] == "cuda:0"
        assert {k: flags.get(k) for k in expected} == expected, command
    assert {flag_values(c)["--worker-name"] for c in commands} == {"w0", "w1", "w2", "w3"}
    finished = trials(tmp_path, "quickstart")
    assert len(finished) == 8 and all(t.state.name in FINISHED for t in finished)
    assert set(runs(tmp_path, "quickstart")["tags.sweeper.device"]) == {"cuda:0"}


def test_out_of_memory_while_packed_reruns_the_trial_alone(
    tmp_path: Path, datasets_dir: Path
) -> None:
    """This test plays a second packed trial: it holds a share of cuda:0 and all but LEAVE_FREE
    of its memory, so the trial's first try runs out of memory. Once the trial says it will rerun
    alone, the memory and the share are let go, and its exclusive rerun gets the whole GPU."""
    with gpu_slot(SweepPaths.resolve(tmp_path).locks, "cuda:0"):
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(0)
        hog = torch.empty(max(0, free - LEAVE_FREE), dtype=torch.uint8, device="cuda:0")
        launcher = start(*launch_args(tmp_path, datasets_dir, OOM_STUDY), "--trials-per-gpu", "2",
                         "--workers", "2", "--trials", "1")  # fmt: skip
        deadline = time.time() + 180
        while not _oom_retry_asked(tmp_path):
            if launcher.poll() is not None or time.time() > deadline:
                launcher.terminate()  # a trial waiting for this test's share would wait on
                _, err = launcher.communicate(timeout=60)
                states = [(t.state.name, t.user_attrs) for t in _trials_or_none(tmp_path)]
                raise AssertionError(f"no out-of-memory retry; trials {states}\n{err[-3000:]}")
            time.sleep(0.2)
        del hog
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    (trial,) = trials(tmp_path, "gpu_oom")
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["oom_retried_alone"] is True
    (run_status,) = runs(tmp_path, "gpu_oom")["status"]
    assert run_status == "FINISHED"


def _trials_or_none(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The OOM study's trials once its launcher has ended (for a failure's message)."""
    try:
        return trials(sweep_dir, "gpu_oom")
    except (KeyError, SweeperError):
        return []


def _oom_retry_asked(sweep_dir: Path) -> bool:
    """Whether a trial set `oom_retried_alone`, read from Optuna's SQLite file read-only: this
    process must not create the storage's tables while the launcher creates them."""
    database = sweep_dir / "optuna.db"
    if not database.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            query = "SELECT 1 FROM trial_user_attributes WHERE key = 'oom_retried_alone'"
            return db.execute(query).fetchone() is not None
    except sqlite3.OperationalError:  # no tables yet, or locked for longer than the timeout
        return False
