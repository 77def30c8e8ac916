"""Model names and options, and their validation: what a study or config is checked against.

Free of torch, so the CLI and a launcher check a study without importing it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.errors import SweeperError
from sweeper.training.models.custom import check_args, is_custom

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
    "model_args": {},  # your own builder's options (models.custom)
    "model_code": None,  # the sha256 of your own builder's file
}

YOURS = 'or your own builder ("package.module:function", or a function of the study file)'

# Activation names and the torch.nn classes they stand for (by name: no torch import here).
ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
}

INITS: tuple[str, ...] = ("default", "he_normal", "xavier_normal")
SHORTCUTS: tuple[str, ...] = ("A", "B")


def _bad(key: str, value: Any, accepted: str) -> SweeperError:
    return SweeperError(f"{key}: bad value {value!r}; accepted: {accepted}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(opts: dict[str, Any], key: str, choices: Sequence[str]) -> None:
    if not isinstance(opts[key], str) or opts[key] not in choices:
        raise _bad(key, opts[key], ", ".join(choices))


def _check_bool(opts: dict[str, Any], key: str, allow_none: bool = False) -> None:
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
        raise SweeperError(f"model: missing; accepted: {', '.join(MODEL_NAMES)}, {YOURS}")
    if is_custom(opts["model"]):
        if not isinstance(opts["model_args"], Mapping):
            raise _bad("model_args", opts["model_args"], "a mapping of your builder's options")
        check_args(opts["model"], opts["model_args"])
        opts["model_args"] = dict(opts["model_args"])
    elif not isinstance(opts["model"], str) or opts["model"] not in MODEL_NAMES:
        raise SweeperError(
            f"model: unknown model {opts['model']!r}; accepted: {', '.join(MODEL_NAMES)}, {YOURS}"
        )
    elif opts["model_args"]:
        raise SweeperError(
            f"options {', '.join(map(repr, opts['model_args']))}: unknown to model"
            f" {opts['model']!r}; only your own builder takes options of its own"
        )
    _check_choice(opts, "activation", tuple(ACTIVATIONS))
    _check_choice(opts, "init", INITS)
    _check_choice(opts, "shortcut", SHORTCUTS)
    dropout = opts["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
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


def check_sizes(num_classes: int, in_channels: int, image_size: int) -> None:
    """Raise unless the data shape arguments are usable."""
    if not _is_int(num_classes) or num_classes < 1:
        raise _bad("num_classes", num_classes, "an int >= 1")
    if not _is_int(in_channels) or in_channels < 1:
        raise _bad("in_channels", in_channels, "an int >= 1 (1 or 3 for images)")
    if not _is_int(image_size) or image_size < 8:
        raise _bad("image_size", image_size, "an int >= 8")
