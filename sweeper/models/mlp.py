"""Multi-layer perceptron on the flattened image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sweeper.models.layers import dense_layers, init_weights


class MLP(nn.Module):
    """Flatten, hidden linear layers (linear, [bn], act, [dropout]), then a linear head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        """Build the layers; in_features is channels * height * width."""
        super().__init__()
        layers, width = dense_layers(in_features, hidden, activation, dropout, batch_norm)
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [B, num_classes]."""
        return self.net(x)


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> MLP:
    """MLP for the options; hidden defaults to (512, 256)."""
    model = MLP(
        in_channels * image_size * image_size,
        num_classes,
        hidden=(512, 256) if opts["hidden"] is None else opts["hidden"],
        activation=opts["activation"],
        dropout=opts["dropout"],
        batch_norm=bool(opts["batch_norm"]),
    )
    init_weights(model, opts["init"])
    return model
