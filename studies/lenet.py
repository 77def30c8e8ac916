"""LeNet-5 (document 002): activation, init, optimizer and regularization.

sweeper launch studies/lenet.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    return {
        "model": "lenet5",
        "activation": trial.suggest_categorical("activation", ["relu", "tanh", "sigmoid", "elu"]),
        "init": trial.suggest_categorical("init", ["default", "he_normal", "xavier_normal"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop", "adagrad"]),
        "lr": trial.suggest_float("lr", 1e-4, 0.1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
    }


study = Study(
    name="lenet",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000},
    trials=40,
    epochs=30,
    patience=5,
)
