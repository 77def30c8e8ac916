"""Batches on the training device: one split resident there, cut, augmented and normalized."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


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
