"""bench/scale.py --tiny's study (issue 24): trials whose own work is a few tens of
milliseconds, so that the service's cost per trial is most of their time.

One epoch of a 3072-32-10 MLP (dropout after the hidden layer) on 512 CIFAR-10 images,
validated on 512 more; lr, weight decay and dropout sampled. The images come from a data
function that reads the file $SWEEPER_BENCH_IMAGES (bench/scale.py writes it from
../shared/datasets), the same file the peers of bench/scale_peers.py read.
"""

import os

import numpy as np

from sweeper import Study

TRAIN, VAL = 512, 512


def cifar_slice():
    """The first TRAIN + VAL images of the file as the train split, the rest as test."""
    images = np.load(os.environ["SWEEPER_BENCH_IMAGES"])
    x, y = images["x"], images["y"]
    return x[: TRAIN + VAL], y[: TRAIN + VAL], x[TRAIN + VAL :], y[TRAIN + VAL :]


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }


study = Study(
    name="scale",
    space=space,
    fixed={
        "model": "mlp",
        "hidden": [32],
        "dataset": cifar_slice,
        "val_size": VAL,
        "batch_size": 128,
        "augment": False,
    },  # fmt: skip
    trials=300,
    epochs=1,
    patience=None,
    pruner="none",
    ensemble={},
)
