"""Accuracy against size: the documents' small models (MLP, LeNet-5, CNN2, ResNet-20), each
trial scored on validation accuracy and on its parameter count; Optuna keeps the Pareto front.

sweeper launch studies/pareto.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    low, high = (0.01, 0.2) if optimizer == "sgd" else (3e-4, 3e-3)
    return {
        "model": trial.suggest_categorical("model", ["mlp", "lenet5", "cnn2", "resnet20"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "optimizer": optimizer,
        "lr": trial.suggest_float("lr", low, high, log=True),
        "batch_size": 128,
        "schedule": "onecycle",
    }


study = Study(
    name="pareto",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000, "augment": False},
    objectives=["val_acc", "params"],  # the front: the most accurate model at each size
    trials=12,
    epochs=4,
    patience=2,
    sampler="tpe",  # Optuna's TPE handles several objectives (or "nsga2")
    pruner="median",  # on val_acc, the first objective (see README)
    ensemble={"k": 0},
)
