"""Sharing a GPU between packed trials on one host, and taking it whole after running out of memory.

Packed workers hold a shared lock on their GPU while they train; a trial that ran out of memory
takes the lock exclusively and runs again, alone, from its last checkpoint. A gate lock in front
keeps new trials from slipping in while that trial waits for the GPU to empty.
"""

from __future__ import annotations

import fcntl
import os
import socket
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
    # The lock dir may be shared by hosts (--ray): a lock is one host's GPU as this process sees
    # it (Ray gives each worker its GPU in CUDA_VISIBLE_DEVICES, and each is its cuda:0).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_")
    name = f"{socket.gethostname()}-{visible}-{device.replace(':', '-')}"
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
