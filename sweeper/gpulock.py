"""Sharing a GPU between packed trials on one host, and taking it whole after running out of memory.

Packed workers hold a shared lock on their GPU while they train; a trial that ran out of memory
takes the lock exclusively and runs again, alone, from its last checkpoint. A gate lock in front
keeps new trials from slipping in while that trial waits for the GPU to empty.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def gpu_slot(lock_dir: Path, device: str, exclusive: bool = False) -> Iterator[None]:
    """Hold a share of `device` (or all of it); a no-op for the CPU."""
    if not device.startswith("cuda"):
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = device.replace(":", "-")
    with open(lock_dir / f"{name}.gate", "a") as gate, open(lock_dir / f"{name}.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
