"""Batches on the training device: one split resident there, cut, augmented and normalized;
and the pace a run trains them at."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

# Called a few batches into a run's first epoch with the pace so far (images_per_s) and the
# seconds an epoch takes at that pace (epoch_s), then with both as measured over that epoch: a
# long run says early how long it takes.
PaceCallback = Callable[[dict[str, float]], None]

PACE_AFTER_S = 3.0  # the pace is measured over this many seconds of batches ...
PACE_MIN_BATCHES = 2  # ... and at least this many, after a warm-up batch
VAL_COST = 1 / 3  # a validation image costs about a third of a training one (forward only)


class DeviceSplit:
    """One split resident on the training device; batches are cut and augmented there."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.device = device
        shape = (1, -1, 1, 1)
        self.shift = torch.as_tensor(mean * 255, device=device).view(shape)
        self.scale = torch.as_tensor(1 / (std * 255), device=device).view(shape)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (when given a generator) normalized batches; the last one may be short."""
        n = len(self.y)
        order = (
            torch.randperm(n, generator=generator, device=generator.device).to(self.device)
            if generator is not None
            else None
        )
        for start in range(0, n, batch_size):
            if order is None:
                x, y = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                x, y = self.x[idx], self.y[idx]
            if augment:
                x = crop_flip(x, 4, generator)
            yield self.normalize(x), y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return (x.float() - self.shift) * self.scale


def crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, then a horizontal flip of a random half of the images:
    offsets and flips drawn per image, all of it one gather (a flip reverses the columns read).
    """
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    shifts = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=gen_device)
    flips = torch.rand(b, generator=generator, device=gen_device) < 0.5
    dy, dx = shifts.to(x.device)
    flips = flips.to(x.device)
    padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    columns = torch.arange(w, device=x.device)
    columns = torch.where(flips[:, None], columns.flip(0), columns)  # [B, W]
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + columns)[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


class PaceMeter:
    """Reports a run's pace twice: early, from its first batches after a warm-up batch
    (allocations, kernel choice), once they took PACE_AFTER_S seconds; then measured, at the end
    of the first epoch (the only report of an epoch shorter than that)."""

    def __init__(
        self,
        report: PaceCallback,
        train_images: int,
        val_images: int,
        device: torch.device,
        epochs: int,
    ) -> None:
        self.report, self.device, self.epochs = report, device, epochs
        self.epoch_images = train_images + VAL_COST * val_images
        self.batches, self.images, self.early, self.done = 0, 0, False, False
        self.started = 0.0

    def batch(self, images: int) -> None:
        """After each training step."""
        if self.early or self.done:
            return
        self.batches += 1
        if self.batches == 1:
            self.started = self._now()
            return
        self.images += images
        if self.batches > PACE_MIN_BATCHES and time.perf_counter() - self.started > PACE_AFTER_S:
            self.early = True
            per_s = self.images / (self._now() - self.started)
            self.report({"images_per_s": per_s, "epoch_s": self.epoch_images / per_s})

    def epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch, with its metrics: the first one's pace as measured (unless it was the
        last epoch: the pace is shown for running trials)."""
        if not self.done:
            self.done = True
            if metrics["epoch"] >= self.epochs:
                return
            self.report({"images_per_s": metrics["images_per_s"], "epoch_s": metrics["seconds"]})

    def _now(self) -> float:
        if self.device.type == "cuda":  # the GPU runs behind the Python that queues its work
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
