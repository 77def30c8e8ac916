"""Layer helpers every model family shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from sweeper.training.models.options import ACTIVATIONS

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for a name in ACTIVATIONS."""
    return getattr(nn, ACTIVATIONS[name])()


def init_weights(model: ModuleT, scheme: str) -> ModuleT:
    """Re-initialise conv, linear and norm layers in place ("default" leaves them alone)."""
    if scheme == "default":
        return model
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
    return model


def flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Features per sample after a fresh `features` on a square image (an eval-mode dummy pass)."""
    features.eval()
    with torch.no_grad():
        n = features(torch.zeros(1, in_channels, image_size, image_size)).numel()
    features.train()
    return n


def conv_layers(
    cin: int, cout: int, kernel: int, padding: int, activation: str, batch_norm: bool
) -> list[nn.Module]:
    """Conv (with bias), optional BatchNorm2d, activation: the torchvision VGG layer order."""
    norm = [nn.BatchNorm2d(cout)] if batch_norm else []
    return [nn.Conv2d(cin, cout, kernel, padding=padding), *norm, make_activation(activation)]


def classifier_layers(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    activation: str,
    dropout: float,
    batch_norm: bool = False,
) -> list[nn.Module]:
    """Hidden linear layers (linear, [bn], act, [dropout]), then a linear layer to the classes."""
    layers: list[nn.Module] = []
    for units in hidden:
        layers.append(nn.Linear(in_features, units))
        if batch_norm:
            layers.append(nn.BatchNorm1d(units))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = units
    return [*layers, nn.Linear(in_features, num_classes)]
