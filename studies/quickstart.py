"""Quickstart: the document 003 CNN on CIFAR-10, tuned; a real sweep in minutes on a laptop CPU.

sweeper launch studies/quickstart.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    low, high = (0.01, 0.2) if optimizer == "sgd" else (3e-4, 3e-3)
    return {
        "model": "cnn2",
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "activation": trial.suggest_categorical("activation", ["relu", "elu"]),
        "optimizer": optimizer,
        "lr": trial.suggest_float("lr", low, high, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
        "schedule": "onecycle",
    }


study = Study(
    name="quickstart",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000, "augment": False},
    trials=6,
    epochs=4,
    patience=2,
    sampler="tpe",
    pruner="median",
    reference=(0.6657, "document 003's hand-tuned CNN"),
    ensemble={"k": 2, "seeds": 2},  # the top 2 configs x 2 seeds: one round of 2 workers
)
