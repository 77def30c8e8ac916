"""The documents' small CNNs (000: cnn1, 003: cnn2) with and without batch norm.

sweeper launch studies/cnn.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    return {
        "model": trial.suggest_categorical("model", ["cnn1", "cnn2"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "activation": trial.suggest_categorical("activation", ["relu", "leaky_relu", "elu"]),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "rmsprop", "sgd"]),
        "lr": trial.suggest_float("lr", 1e-4, 0.05, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
        "augment": trial.suggest_categorical("augment", [True, False]),
    }


study = Study(
    name="cnn",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000},
    trials=30,
    epochs=20,
    patience=4,
    sampler="qmc",
    pruner="median",
)
