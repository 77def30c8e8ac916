"""A trial's files on disk: the epoch checkpoint of each try (to resume from) and the best
weights (until the MLflow run holds them). Written atomically, read with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sweeper.atomic import replacing
from sweeper.errors import first_line
from sweeper.records import BestWeights
from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData
from sweeper.training.loop import TrainResult


class CheckpointError(Exception):
    """A checkpoint could not be written (disk full, no permission): the trial fails."""


def drop_files(files: list[Path]) -> None:
    """Delete a trial's files that nothing needs any more. A trial that ended (complete, pruned,
    failed; not interrupted, not taken over) needs no epoch checkpoint: neither its own nor those
    of the tries it resumed."""
    for file in files:
        file.unlink(missing_ok=True)


def load_newest(files: list[Path]) -> dict[str, Any] | None:
    """The first of `files` that exists, loaded; None if none does."""
    for file in files:
        if file.exists():
            return torch.load(file, map_location="cpu", weights_only=True)
    return None


def save_atomic(obj: Any, path: Path) -> None:
    """Write a checkpoint so that a crash leaves the old file or the new one, never half of one."""
    try:
        with replacing(path) as tmp, open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
        cause = getattr(error, "strerror", None) or first_line(error)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {cause}; free disk space or make"
            f" {path.parent} writable, then launch again"
        ) from None


def save_best(path: Path, result: TrainResult, config: TrainConfig, data: SplitData) -> None:
    """The best epoch's weights with what it takes to rebuild and feed the model."""
    best = BestWeights(
        model={k: v.cpu() for k, v in result.model.state_dict().items()},
        config=config.to_dict(),
        classes=data.classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        mean=torch.from_numpy(result.mean),
        std=torch.from_numpy(result.std),
    )
    save_atomic(best.to_dict(), path)
