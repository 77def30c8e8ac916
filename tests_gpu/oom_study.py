"""The out-of-memory test's study: one trial of ResNet-56 at batch 4096 (4,096 training images,
one step). It needs about 15-30 GB of GPU memory (about 7 MB of saved activations per image in
fp32, half that in bf16): far less than an H100 or H200 has, far more than the few GiB the test
leaves free while it plays the other packed trial."""

import optuna

from sweeper import Study


def space(trial: optuna.Trial) -> dict:
    return {"lr": trial.suggest_float("lr", 0.02, 0.05, log=True)}


study = Study(
    name="gpu_oom",
    space=space,
    fixed={
        "dataset": "cifar10",
        "model": "resnet56",
        "batch_size": 4096,
        "train_size": 4096,
        "val_size": 1000,
        "eval_batch_size": 1000,
    },
    trials=1,
    epochs=1,
    patience=None,
    pruner="none",
    ensemble={},
)
