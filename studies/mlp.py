"""An MLP on the flattened 3,072 pixels (document 002): depth, width and dropout.

sweeper launch studies/mlp.py
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    layers = trial.suggest_int("layers", 1, 3)
    width = trial.suggest_categorical("width", [256, 512, 1024, 2048])
    return {
        "model": "mlp",
        "hidden": [width // 2**i for i in range(layers)],
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "activation": trial.suggest_categorical("activation", ["relu", "elu", "tanh"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"]),
        "lr": trial.suggest_float("lr", 1e-4, 0.1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
    }


study = Study(
    name="mlp",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000, "augment": False},
    trials=30,
    epochs=30,
    patience=5,
    sampler="random",
)
