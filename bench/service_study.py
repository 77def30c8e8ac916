"""A fixed grid of cnn2 configs, so the bare loop and the service train exactly the same runs."""

import optuna

from sweeper import Study

LRS = [5e-4, 1e-3, 2e-3, 4e-3]


def space(trial: optuna.Trial) -> dict:
    return {"model": "cnn2", "optimizer": "adam", "lr": trial.suggest_categorical("lr", LRS)}


study = Study(
    name="service-bench",
    space=space,
    fixed={
        "dataset": "cifar10",
        "val_size": 5000,
        "train_size": 20000,
        "augment": False,
        "weight_decay": 0.0,
        "batch_size": 128,
    },  # fmt: skip
    trials=len(LRS),
    epochs=3,
    patience=None,
    sampler="grid",
    sampler_options={"search_space": {"lr": LRS}},
    pruner="none",
    ensemble={},
)
