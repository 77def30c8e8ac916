"""Model registry: option checking, `build_model`, and the helpers every model shares."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sweeper.errors import SweeperError

MODEL_NAMES: tuple[str, ...] = (
    "mlp",
    "lenet5",
    "cnn1",
    "cnn2",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet9",
)

MODEL_OPTIONS: dict[str, Any] = {
    "model": None,
    "activation": "relu",
    "init": "default",
    "dropout": 0.0,
    "batch_norm": None,
    "hidden": None,
    "shortcut": "A",
    "pretrained": False,
    "freeze_features": False,
}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

INITS: tuple[str, ...] = ("default", "he_normal", "xavier_normal")
SHORTCUTS: tuple[str, ...] = ("A", "B")


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for a name in ACTIVATIONS."""
    return ACTIVATIONS[name]()


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


def _bad(key: str, value: Any, accepted: str) -> SweeperError:
    """The one-line error for a bad option value."""
    return SweeperError(f"{key}: bad value {value!r}; accepted: {accepted}")


def _is_int(value: Any) -> bool:
    """True for ints that are not bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(opts: dict[str, Any], key: str, choices: Sequence[str]) -> None:
    """Raise unless opts[key] is one of choices."""
    if not isinstance(opts[key], str) or opts[key] not in choices:
        raise _bad(key, opts[key], ", ".join(choices))


def _check_bool(opts: dict[str, Any], key: str, allow_none: bool = False) -> None:
    """Raise unless opts[key] is a bool (or None when allowed)."""
    value = opts[key]
    if not (isinstance(value, bool) or (allow_none and value is None)):
        raise _bad(key, value, "true, false" + (" or null" if allow_none else ""))


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate options and return them merged over MODEL_OPTIONS."""
    if not isinstance(options, Mapping):
        raise SweeperError(f"options: expected a mapping, got {type(options).__name__}")
    accepted = ", ".join(MODEL_OPTIONS)
    for key in options:
        if key not in MODEL_OPTIONS:
            close = difflib.get_close_matches(str(key), list(MODEL_OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweeperError(f"options: unknown key {key!r}{hint}; accepted: {accepted}")
    opts = {**MODEL_OPTIONS, **options}
    if opts["model"] is None:
        raise SweeperError(f"model: missing; accepted: {', '.join(MODEL_NAMES)}")
    if not isinstance(opts["model"], str) or opts["model"] not in MODEL_NAMES:
        raise SweeperError(
            f"model: unknown model {opts['model']!r}; accepted: {', '.join(MODEL_NAMES)}"
        )
    _check_choice(opts, "activation", tuple(ACTIVATIONS))
    _check_choice(opts, "init", INITS)
    _check_choice(opts, "shortcut", SHORTCUTS)
    dropout = opts["dropout"]
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool)) or not (
        0.0 <= dropout < 1.0
    ):
        raise _bad("dropout", dropout, "a number in [0, 1)")
    hidden = opts["hidden"]
    if hidden is not None:
        if not isinstance(hidden, list | tuple) or not all(_is_int(h) and h > 0 for h in hidden):
            raise _bad("hidden", hidden, "a list of positive ints or null")
        opts["hidden"] = tuple(hidden)
    _check_bool(opts, "batch_norm", allow_none=True)
    _check_bool(opts, "pretrained")
    _check_bool(opts, "freeze_features")
    for key in ("pretrained", "freeze_features"):
        if opts[key] and not opts["model"].startswith("vgg"):
            raise SweeperError(
                f"{key}: true is only for vgg11, vgg13, vgg16, vgg19; got model {opts['model']!r}"
            )
    return opts


def _check_sizes(num_classes: int, in_channels: int, image_size: int) -> None:
    """Raise unless the data shape arguments are usable."""
    if not _is_int(num_classes) or num_classes < 1:
        raise _bad("num_classes", num_classes, "an int >= 1")
    if not _is_int(in_channels) or in_channels < 1:
        raise _bad("in_channels", in_channels, "an int >= 1 (1 or 3 for images)")
    if not _is_int(image_size) or image_size < 8:
        raise _bad("image_size", image_size, "an int >= 8")


def build_model(
    options: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> torch.nn.Module:
    """Build the model named by options["model"] for [B, in_channels, image_size, image_size]."""
    from sweeper.models import cnn, lenet, mlp, resnet, resnet9, vgg

    opts = check_options(options)
    _check_sizes(num_classes, in_channels, image_size)
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
