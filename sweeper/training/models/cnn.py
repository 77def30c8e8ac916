"""The two small CNNs of the source documents: CNN1 (doc 000) and the two-conv CNN2 (doc 003)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweeper.training.models.layers import conv_layers, flat_size, init_weights


class ConvNet(nn.Module):
    """Convolutional features, flattened, then the classifier layers."""

    def __init__(self, features: nn.Sequential, classifier: list[nn.Module]) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(nn.Flatten(), *classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> ConvNet:
    """CNN1 (conv 64 k3 p1, conv 256 k5 p2, pool 2) or CNN2 (conv 16 k3 p1, pool 2, conv 32 k3 p1,
    pool 2: 25,578 parameters), then one linear layer; batch_norm defaults to off."""
    act, bn = opts["activation"], bool(opts["batch_norm"])
    if name == "cnn1":
        features = nn.Sequential(
            *conv_layers(in_channels, 64, 3, 1, act, bn),
            *conv_layers(64, 256, 5, 2, act, bn),
            nn.MaxPool2d(2),
        )
    else:
        features = nn.Sequential(
            *conv_layers(in_channels, 16, 3, 1, act, bn),
            nn.MaxPool2d(2),
            *conv_layers(16, 32, 3, 1, act, bn),
            nn.MaxPool2d(2),
        )
    n = flat_size(features, in_channels, image_size)
    return init_weights(ConvNet(features, [nn.Linear(n, num_classes)]), opts["init"])
