"""CIFAR ResNets (document 002) and the fast ResNet-9 baseline.

sweeper launch studies/resnet.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    model = trial.suggest_categorical(
        "model", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet9"]
    )
    return {
        "model": model,
        "shortcut": trial.suggest_categorical("shortcut", ["A", "B"]),
        "optimizer": "sgd",
        "nesterov": True,
        "lr": trial.suggest_float("lr", 0.02, 0.4, log=True),
        "momentum": 0.9,
        "weight_decay": trial.suggest_float("weight_decay", 5e-5, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512]),
        "schedule": trial.suggest_categorical("schedule", ["step", "cosine", "onecycle"]),
        "warmup_epochs": trial.suggest_float("warmup_epochs", 0.0, 2.0),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


study = Study(
    name="resnet",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000},
    trials=40,
    epochs=60,
    patience=10,
    pruner="hyperband",
    ensemble={"k": 3, "seeds": 3},
)
