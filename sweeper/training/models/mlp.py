"""Multi-layer perceptron on the flattened image."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweeper.training.models.layers import classifier_layers, init_weights


class MLP(nn.Module):
    """Flatten, hidden linear layers (linear, [bn], act, [dropout]), then a linear head."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> MLP:
    """MLP for the options; hidden defaults to (512, 256)."""
    layers = classifier_layers(
        in_channels * image_size * image_size,
        (512, 256) if opts["hidden"] is None else opts["hidden"],
        num_classes,
        opts["activation"],
        opts["dropout"],
        bool(opts["batch_norm"]),
    )
    return init_weights(MLP(layers), opts["init"])
