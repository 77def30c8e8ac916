"""Workers as local processes: one `sweeper worker` per device slot of this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweeper.pool.forks import Forked, warm_up
from sweeper.pool.interface import Slots

STOP_WAIT_S = 60  # a stopping worker saves and logs what it has; then it is killed

# An NVIDIA, AMD (ROCm) or WSL2 GPU driver shows one of these; without them torch sees no GPU.
GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def default_devices(workers: int | None, trials_per_gpu: int) -> list[str]:
    """One slot per GPU (times trials_per_gpu), else one CPU worker; --workers overrides."""
    gpus = 0
    if any(Path(p).exists() for p in GPU_DRIVER_FILES):  # else no need to import torch (seconds)
        import torch

        gpus = torch.cuda.device_count()
        if not gpus:  # a GPU machine whose torch sees none: say so, not train on the CPU quietly
            print("sweeper: note: this machine has a GPU driver but torch sees no GPU (torch"
                  f" {torch.__version__}, CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); the workers train on the"
                  " CPU", file=sys.stderr)  # fmt: skip
    if gpus:
        slots = [f"cuda:{i}" for i in range(gpus) for _ in range(trials_per_gpu)]
        count = workers or len(slots)
        return [slots[i % len(slots)] for i in range(count)]
    return ["cpu"] * (workers or 1)


class LocalPool:
    """Worker processes on this machine, one per device slot, each with its share of the CPU
    threads; workers that share a GPU are packed."""

    local = True

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices
        self.threads = max(1, (os.cpu_count() or 1) // len(devices))
        self.packed = len(set(devices)) < len(devices) and devices[0].startswith("cuda")
        self.slots = Slots.none()

    @classmethod
    def of(cls, workers: int | None, trials_per_gpu: int) -> LocalPool:
        warm_up()  # the workers' imports begin while the launcher opens its stores
        return cls(default_devices(workers, trials_per_gpu))

    def start(self, commands: list[list[str]]) -> None:
        self.slots = Slots(lambda slot: Forked(commands[slot]), Forked.give, len(commands))

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking as soon as a worker ends (the launch goes on at once)."""
        end, running = time.monotonic() + seconds, self.slots.running()
        while time.monotonic() < end and self.slots.running() == running:
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.slots.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for i, process in enumerate(self.slots.processes):
            try:
                process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:  # stuck: the launcher must not wait forever
                process.kill()
                process.wait()
                print(f"sweeper: worker w{i} did not stop within {STOP_WAIT_S} s: killed; its"
                      " trial resumes from its last epoch checkpoint on the next launch",
                      file=sys.stderr)  # fmt: skip
