"""CIFAR ResNet-20/32/44/56 (He et al. 2015, section 4.2) with shortcut option A or B."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.training.models.layers import init_weights, make_activation


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by stride and zero-pad the new channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, activation after the sum."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = PadShortcut(stride, cout - cin)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Depth 6n+2: stem conv 16, three stages of n blocks at 16/32/64 channels, avg pool, FC."""

    def __init__(
        self, depth: int, num_classes: int, in_channels: int, activation: str, shortcut: str
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            make_activation(activation),
        )
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range((depth - 2) // 6):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, activation, shortcut))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> CifarResNet:
    """CifarResNet of the depth in the name; init "default" means he_normal here."""
    depth = int(name.removeprefix("resnet"))
    model = CifarResNet(depth, num_classes, in_channels, opts["activation"], opts["shortcut"])
    return init_weights(model, "he_normal" if opts["init"] == "default" else opts["init"])
