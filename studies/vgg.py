"""VGG on CIFAR-10, the documents' search (000, 004): depth, batch norm, head, regularization.

sweeper launch studies/vgg.py          # one worker per GPU
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "rmsprop", "adam"])
    lr_range = {"sgd": (1e-3, 0.1), "rmsprop": (1e-4, 3e-3), "adam": (1e-4, 3e-3)}[optimizer]
    config = {
        "model": trial.suggest_categorical("model", ["vgg11", "vgg13", "vgg16", "vgg19"]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "activation": trial.suggest_categorical("activation", ["relu", "leaky_relu", "elu"]),
        "init": trial.suggest_categorical("init", ["default", "he_normal", "xavier_normal"]),
        "hidden": [trial.suggest_categorical("hidden_units", [256, 512, 1024, 4096])],
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "optimizer": optimizer,
        "lr": trial.suggest_float("lr", *lr_range, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 5e-4, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256]),
        "schedule": trial.suggest_categorical("schedule", ["step", "cosine", "onecycle"]),
    }
    if optimizer != "adam":
        config["momentum"] = trial.suggest_float("momentum", 0.8, 0.95)
    return config


study = Study(
    name="vgg",
    space=space,
    fixed={"dataset": "cifar10", "val_size": 5000, "label_smoothing": 0.1},
    trials=60,
    epochs=40,
    patience=8,
    sampler="tpe",
    pruner="hyperband",
    ensemble={"k": 3, "seeds": 3},
)
