"""LeNet-5: two 5x5 convs with 2x2 max pooling, then fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sweeper.models.layers import conv_layers, dense_layers, flat_size, init_weights


class LeNet5(nn.Module):
    """conv 6 k5, pool 2, conv 16 k5, pool 2, FC hidden..., FC classes (3x32x32: 62,006 params)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        hidden: Sequence[int] = (120, 84),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        """Build the layers; images under 14 pixels get padding 2 so both convs fit."""
        super().__init__()
        pad = 2 if image_size < 14 else 0
        self.features = nn.Sequential(
            *conv_layers(in_channels, 6, 5, pad, activation, batch_norm),
            nn.MaxPool2d(2),
            *conv_layers(6, 16, 5, pad, activation, batch_norm),
            nn.MaxPool2d(2),
        )
        n = flat_size(self.features, in_channels, image_size)
        layers, width = dense_layers(n, hidden, activation, dropout)
        self.classifier = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [B, num_classes]."""
        return self.classifier(self.features(x))


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> LeNet5:
    """LeNet-5 for the options; hidden defaults to (120, 84)."""
    model = LeNet5(
        num_classes,
        in_channels,
        image_size,
        hidden=(120, 84) if opts["hidden"] is None else opts["hidden"],
        activation=opts["activation"],
        dropout=opts["dropout"],
        batch_norm=bool(opts["batch_norm"]),
    )
    init_weights(model, opts["init"])
    return model
