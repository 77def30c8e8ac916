"""Layer helpers every model family shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sweeper.models.options import ACTIVATIONS


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for a name in ACTIVATIONS."""
    return getattr(nn, ACTIVATIONS[name])()


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise conv, linear and norm layers in place ("default" leaves them alone)."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if scheme == "he_normal":
                mode = "fan_out" if isinstance(m, nn.Conv2d) else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Number of features per sample after `features` on a square image (dummy forward)."""
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, image_size, image_size))
    features.train(was_training)
    return out.numel()


def conv_layers(
    cin: int, cout: int, kernel: int, padding: int, activation: str, batch_norm: bool
) -> list[nn.Module]:
    """Conv (with bias), optional BatchNorm2d, activation: the torchvision VGG layer order."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return [*layers, make_activation(activation)]


def dense_layers(
    in_features: int,
    hidden: Sequence[int],
    activation: str,
    dropout: float,
    batch_norm: bool = False,
) -> tuple[list[nn.Module], int]:
    """Hidden linear layers (linear, [bn], act, [dropout]) and the width they end with."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers.append(nn.Linear(width, units))
        if batch_norm:
            layers.append(nn.BatchNorm1d(units))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    return layers, width
