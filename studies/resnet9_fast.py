"""ResNet-9 for speed on one GPU: a narrow search near the known-good DAWNBench settings.

sweeper launch studies/resnet9_fast.py --timeout 600 --trials-per-gpu 4 --workers 4

Known good (David Page, "How to train your ResNet", Myrtle.ai 2018, the model in
sweeper/models/resnet9.py): batch 512, SGD Nesterov momentum 0.9, a one-cycle learning rate
peaking at 0.4, weight decay 5e-4, random crop + flip, label smoothing 0.2 in the later posts;
94% test accuracy in 24 epochs on CIFAR-10. Here: 16 epochs a trial, so that a 10-minute sweep
on one H100/H200 runs dozens of them, and a small seed ensemble (2 configs x 2 seeds) on top.
The one-cycle ramp-up makes early epochs of a good high-lr run look worse than a cautious one:
no pruner, every trial runs its 16 epochs.
"""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 0.2, 0.8, log=True),  # the cycle's peak, per mean loss
        "weight_decay": trial.suggest_float("weight_decay", 2.5e-4, 1e-3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.1, 0.3),
    }


study = Study(
    name="resnet9_fast",
    space=space,
    fixed={
        "dataset": "cifar10",
        "val_size": 5000,
        "model": "resnet9",
        "batch_size": 512,
        "optimizer": "sgd",
        "momentum": 0.9,
        "nesterov": True,
        "schedule": "onecycle",  # linear up for 30% of the steps, then linear down to 0
        "augment": True,
    },
    trials=60,
    timeout=600,  # seconds of starting trials per launch
    epochs=16,
    patience=None,
    sampler="tpe",
    pruner="none",
    ensemble={"k": 2, "seeds": 2},
)
