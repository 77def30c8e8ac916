"""Frozen parts stay frozen: a normalization layer whose parameters are all frozen keeps its
running statistics while the rest of the model trains (sweeper.training.loop)."""

from __future__ import annotations

import torch
from torch import nn

from sweeper.training.config import TrainConfig
from sweeper.training.data import ImageSet, split
from sweeper.training.loop import keep_frozen_norms_in_eval, prepare, resolve_device, train


def test_frozen_vgg_features_keep_their_batch_norm_statistics(cifar10: ImageSet) -> None:
    data = split(cifar10, val_size=64, train_size=320, seed=0)
    config = TrainConfig(model="vgg11", batch_norm=True, freeze_features=True, pretrained=False,
                         epochs=1, batch_size=64, lr=0.05, device="cpu", threads=2)  # fmt: skip
    start, _, _ = prepare(config, data, resolve_device("cpu"))  # the same seeded model
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    trained = train(config, data).model.state_dict()
    norms = [k for k in before if k.startswith("features.") and "running_" in k]
    assert len(norms) == 2 * 8  # mean and var of vgg11's 8 BatchNorm2d
    for key in norms + [k.replace("running_mean", "num_batches_tracked") for k in norms]:
        assert torch.equal(trained[key], before[key]), key
    for key in [k for k in before if k.startswith("features.")]:
        assert torch.equal(trained[key], before[key]), key  # weights frozen as before
    head = [k for k in before if k.startswith("classifier.") and k.endswith("weight")]
    assert head and all(not torch.equal(trained[k], before[k]) for k in head)


def test_only_norm_layers_with_all_their_parameters_frozen_go_to_eval() -> None:
    frozen, trained, bare = nn.BatchNorm1d(4), nn.BatchNorm1d(4), nn.BatchNorm1d(4, affine=False)
    half = nn.BatchNorm1d(4)
    model = nn.Sequential(frozen, trained, bare, half, nn.Dropout(0.5))
    frozen.requires_grad_(False)
    half.bias.requires_grad_(False)
    model.train()
    keep_frozen_norms_in_eval(model)
    assert [m.training for m in model] == [False, True, True, True, True]
