"""DAWNBench-style ResNet-9 (Myrtle.ai / David Page), logits scaled by 0.125."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweeper.training.models.layers import init_weights, make_activation


def conv_bn(cin: int, cout: int, activation: str) -> nn.Sequential:
    """3x3 conv (no bias), BatchNorm2d, activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        make_activation(activation),
    )


class Residual(nn.Module):
    """x + two conv-BN-act blocks of the same width."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels, activation), conv_bn(channels, channels, activation)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """prep 64, layer1 128+pool+res, layer2 256+pool, layer3 512+pool+res, max pool, linear."""

    def __init__(self, num_classes: int, in_channels: int, activation: str) -> None:
        super().__init__()
        self.prep = conv_bn(in_channels, 64, activation)
        self.layer1 = nn.Sequential(
            conv_bn(64, 128, activation), nn.MaxPool2d(2), Residual(128, activation)
        )
        self.layer2 = nn.Sequential(conv_bn(128, 256, activation), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(
            conv_bn(256, 512, activation), nn.MaxPool2d(2), Residual(512, activation)
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(512, num_classes, bias=False)
        self.scale = 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.pool(x).flatten(1)) * self.scale


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> ResNet9:
    """ResNet-9 for the options (any image size: it ends in a global pool)."""
    return init_weights(ResNet9(num_classes, in_channels, opts["activation"]), opts["init"])
