"""bench/scale.py's study: trials that take a fixed wall time and almost no CPU, through sweeper's
real path (launcher, workers, Optuna storage and heartbeats, one MLflow run per trial with its
params, metrics, confusion matrix and best weights).

The waiting is the model's: a linear classifier whose training pass sleeps
$SWEEPER_BENCH_TRIAL_S (default 1) seconds, on one batch of 24 tiny images from a data function,
for one epoch. Validation, the shape check and everything else run at full speed.
"""

import os
import time

import numpy as np
from torch import nn

from sweeper import Study

SECONDS = float(os.environ.get("SWEEPER_BENCH_TRIAL_S", "1"))


class Waits(nn.Module):
    """The trial's work: one training pass that waits SECONDS."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x):
        if self.training:
            time.sleep(SECONDS)
        return self.linear(x.flatten(1))


def waiting(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return Waits(in_channels * image_size**2, num_classes)


def tiny_images():
    """32 training and 16 test images of 8x8, two classes."""
    x = np.random.default_rng(0).integers(0, 256, (48, 3, 8, 8), dtype=np.uint8)
    y = np.arange(48) % 2
    return x[:32], y[:32], x[32:], y[32:]


def space(trial):
    return {
        "model": waiting,
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
    }


study = Study(
    name="scale",
    space=space,
    fixed={"dataset": tiny_images, "val_size": 8, "batch_size": 24, "augment": False},
    trials=100,
    epochs=1,
    patience=None,
    pruner="none",
    ensemble={},
)
