"""LeNet-5: two 5x5 convs with 2x2 max pooling, then fully connected layers."""

from __future__ import annotations

from typing import Any

from torch import nn

from sweeper.training.models.cnn import ConvNet
from sweeper.training.models.layers import classifier_layers, conv_layers, flat_size, init_weights


class LeNet5(ConvNet):
    """conv 6 k5, pool 2, conv 16 k5, pool 2, FC hidden..., FC classes (3x32x32: 62,006 params)."""


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> LeNet5:
    """LeNet-5 for the options; hidden defaults to (120, 84), images under 14 pixels get padding
    2 so both convs fit."""
    act, bn = opts["activation"], bool(opts["batch_norm"])
    pad = 2 if image_size < 14 else 0
    features = nn.Sequential(
        *conv_layers(in_channels, 6, 5, pad, act, bn),
        nn.MaxPool2d(2),
        *conv_layers(6, 16, 5, pad, act, bn),
        nn.MaxPool2d(2),
    )
    hidden = (120, 84) if opts["hidden"] is None else opts["hidden"]
    n = flat_size(features, in_channels, image_size)
    head = classifier_layers(n, hidden, num_classes, act, opts["dropout"])
    return init_weights(LeNet5(features, head), opts["init"])
