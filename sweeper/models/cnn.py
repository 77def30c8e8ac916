"""The two small CNNs of the source documents: CNN1 (doc 000) and the two-conv CNN2 (doc 003)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweeper.models.layers import conv_layers, flat_size, init_weights


class ConvNet(nn.Module):
    """Convolutional features, flattened, then one linear layer to the classes."""

    def __init__(self, features: nn.Sequential, num_classes: int, in_channels: int, size: int):
        super().__init__()
        self.features = features
        n = flat_size(self.features, in_channels, size)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(n, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [B, num_classes]."""
        return self.classifier(self.features(x))


def CNN1(  # noqa: N802 (named like the class it builds)
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "relu",
    batch_norm: bool = False,
) -> ConvNet:
    """conv 64 k3 p1, act, conv 256 k5 p2, act, maxpool 2, FC 256*(H/2)*(W/2) -> classes."""
    features = nn.Sequential(
        *conv_layers(in_channels, 64, 3, 1, activation, batch_norm),
        *conv_layers(64, 256, 5, 2, activation, batch_norm),
        nn.MaxPool2d(2),
    )
    return ConvNet(features, num_classes, in_channels, image_size)


def CNN2(  # noqa: N802
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "relu",
    batch_norm: bool = False,
) -> ConvNet:
    """conv 16 k3 p1, act, pool 2, conv 32 k3 p1, act, pool 2, FC 32*8*8 -> classes (25,578)."""
    features = nn.Sequential(
        *conv_layers(in_channels, 16, 3, 1, activation, batch_norm),
        nn.MaxPool2d(2),
        *conv_layers(16, 32, 3, 1, activation, batch_norm),
        nn.MaxPool2d(2),
    )
    return ConvNet(features, num_classes, in_channels, image_size)


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> ConvNet:
    """CNN1 or CNN2 (by name) for the options; batch_norm defaults to off."""
    make = CNN1 if name == "cnn1" else CNN2
    model = make(num_classes, in_channels, image_size, opts["activation"], bool(opts["batch_norm"]))
    init_weights(model, opts["init"])
    return model
