"""Multi-layer perceptron on the flattened image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sweeper.models.registry import dense_layers


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
