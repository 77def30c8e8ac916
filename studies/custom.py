"""Your own network: a depthwise-separable CNN written right here, its width and depth searched.

sweeper launch studies/custom.py

`space()` names the builder function as the model; the keys it returns that are no TrainConfig
setting (width, depth) are the builder's own options, searched like the rest and logged as MLflow
params. The builder also gets the data's num_classes, in_channels and image_size, and sweeper's
shared options it names (dropout here). The ensemble, the exports and `sweeper predict` rebuild
it from this file, as long as the file is unchanged (its sha256 is kept with each model).
"""

import optuna
from torch import nn

from sweeper import Study


def separable(cin: int, cout: int) -> list[nn.Module]:
    """A depthwise 3x3 conv (one filter per channel), then a pointwise 1x1 conv that mixes them."""
    return [
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def mobile_cnn(
    width: int, depth: int, num_classes: int, in_channels: int, dropout: float = 0.0
) -> nn.Module:
    """A stem conv, then `depth` stages of two separable convs, the width doubling (and the
    image halving) at each stage; global average pooling and one linear layer."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    channels = width
    for stage in range(depth):
        out = width * 2**stage
        layers += [*separable(channels, out), *separable(out, out), nn.MaxPool2d(2)]
        channels = out
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, *head, nn.Linear(channels, num_classes))


def space(trial: optuna.Trial) -> dict:
    return {
        "model": mobile_cnn,
        "width": trial.suggest_categorical("width", [16, 32, 48]),
        "depth": trial.suggest_int("depth", 2, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "optimizer": "sgd",
        "lr": trial.suggest_float("lr", 0.02, 0.2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
        "schedule": "onecycle",
    }


study = Study(
    name="custom",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000},
    trials=8,
    epochs=6,
    patience=2,
    sampler="tpe",
    pruner="median",
    ensemble={"k": 2, "seeds": 2},
)
