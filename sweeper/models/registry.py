"""`build_model`, and the layer helpers every model shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sweeper.errors import SweeperError
from sweeper.models.options import ACTIVATIONS, check_options, check_sizes


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


def build_model(
    options: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> torch.nn.Module:
    """Build the model named by options["model"] for [B, in_channels, image_size, image_size]."""
    from sweeper.models import cnn, lenet, mlp, resnet, resnet9, vgg

    opts = check_options(options)
    check_sizes(num_classes, in_channels, image_size)
    name, act, hidden, bn = opts["model"], opts["activation"], opts["hidden"], opts["batch_norm"]
    model: nn.Module
    if name == "mlp":
        model = mlp.MLP(
            in_channels * image_size * image_size,
            num_classes,
            hidden=(512, 256) if hidden is None else hidden,
            activation=act,
            dropout=opts["dropout"],
            batch_norm=bool(bn),
        )
    elif name == "lenet5":
        model = lenet.LeNet5(
            num_classes,
            in_channels,
            image_size,
            hidden=(120, 84) if hidden is None else hidden,
            activation=act,
            dropout=opts["dropout"],
            batch_norm=bool(bn),
        )
    elif name in ("cnn1", "cnn2"):
        cls = cnn.CNN1 if name == "cnn1" else cnn.CNN2  # builders of cnn.ConvNet
        model = cls(num_classes, in_channels, image_size, activation=act, batch_norm=bool(bn))
    elif name.startswith("vgg"):
        if opts["pretrained"] and in_channels != 3:
            raise SweeperError(
                f"pretrained: ImageNet weights need in_channels 3, got {in_channels}"
            )
        model = vgg.VGG(
            vgg.CFGS[name],
            num_classes,
            in_channels,
            hidden=(512,) if hidden is None else hidden,
            activation=act,
            dropout=opts["dropout"],
            batch_norm=True if bn is None else bn,
        )
    elif name == "resnet9":
        model = resnet9.ResNet9(num_classes, in_channels, activation=act)
    else:
        model = resnet.CifarResNet(
            int(name.removeprefix("resnet")),
            num_classes,
            in_channels,
            activation=act,
            shortcut=opts["shortcut"],
        )
    init = opts["init"]
    if init == "default" and isinstance(model, resnet.CifarResNet):
        init = "he_normal"
    init_weights(model, init)
    if opts["pretrained"]:
        vgg.load_pretrained(model, name, batch_norm=True if bn is None else bn)
    if opts["freeze_features"]:
        model.features.requires_grad_(False)
    return model
