"""Your own network: a model builder a study names, found, checked against its options, called.

A config names a builder by reference: "package.module:function" (importable where the workers
run) or "/path/to/file.py:function" (a function in a study file). It is called with the options
the study's space returns for it (TrainConfig.model_args); the data's num_classes, in_channels
and image_size where its signature names them (num_classes also through **kwargs); and those of
sweeper's shared model options (activation, dropout, ...) that it names. The config also keeps a
hash of the builder's file, so a saved model is rebuilt only by the code that trained it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from sweeper.errors import SweeperError, first_line
from sweeper.spec.userfile import code_hash, is_reference, raised, resolve

DATA_ARGS = ("num_classes", "in_channels", "image_size")
# sweeper's model options a builder receives when its signature names them
SHARED_OPTIONS = ("activation", "init", "dropout", "batch_norm", "hidden", "shortcut")
PLAIN = (bool, int, float, str, type(None))  # option values that JSON and MLflow params keep


class BuilderError(SweeperError):
    """A builder raised, or made something that is not a model for the data: one trial fails."""


def is_custom(model: object) -> bool:
    return is_reference(model)


def check_args(ref: str, args: Mapping[str, Any]) -> None:
    """Raise unless the builder takes every option of `args` and gets every one it needs."""
    name = ref.rpartition(":")[2]
    for key, value in args.items():
        if not isinstance(value, PLAIN) and not (
            isinstance(value, list | tuple) and all(isinstance(v, PLAIN) for v in value)
        ):
            raise SweeperError(
                f"model_args: {key}={value!r}; a builder's options are numbers, strings, bools"
                " or lists of them (they are logged as MLflow params and saved as JSON)"
            )
    params = inspect.signature(resolve(ref, "model")).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in args:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweeperError(
                f"model_args: {name}() takes no option {key!r}{hint}; it takes"
                f" {', '.join(named) or 'no options'}"
            )
    given = {*args, *DATA_ARGS, *SHARED_OPTIONS}
    needed = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    missing = [n for n in needed if n in named and n not in given]
    if missing:
        raise SweeperError(
            f"model_args: {name}() needs {', '.join(missing)}; return them from space() (or"
            " fixed) as keys of their own, or give them defaults"
        )


def build(
    opts: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int
) -> Any:  # an nn.Module: torch is imported in here, not when configs are checked
    """Call the builder of checked options `opts` and check what it returns."""
    import torch
    from torch import nn

    ref = opts["model"]
    name = ref.rpartition(":")[2]
    builder = resolve(ref, "model")
    now = code_hash(ref)
    if opts.get("model_code") and opts["model_code"] != now:
        raise SweeperError(
            f"model: {ref} has changed since this model was trained (its file's sha256 began"
            f" {opts['model_code']}, now {now}); restore that version of the file to rebuild it"
        )
    kwargs = _kwargs(builder, opts, (num_classes, in_channels, image_size))
    shown = ", ".join(f"{k}={v!r}" for k, v in opts["model_args"].items())
    try:
        model = builder(**kwargs)
    except Exception as exc:
        raise BuilderError(raised(f"{name}({shown})", exc)) from None
    if not isinstance(model, nn.Module):
        raise BuilderError(f"{name}({shown}) returned {type(model).__name__}, not an nn.Module")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as exc:
        raise BuilderError(
            f"{name}({shown}) fails on a batch of [2, {in_channels}, {image_size}, {image_size}]"
            f" images: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    model.train()
    shape = list(getattr(out, "shape", []))
    if shape != [2, num_classes]:
        raise BuilderError(
            f"{name}({shown}) returns outputs of shape {shape} for 2 images; it must return"
            f" [2, {num_classes}], one logit per class of the data"
        )
    return model


def takes(ref: str, option: str) -> bool:
    """Whether the builder names `option` in its signature."""
    return option in inspect.signature(resolve(ref, "model")).parameters


def _kwargs(builder: Callable, opts: Mapping[str, Any], sizes: tuple[int, int, int]) -> dict:
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # **kwargs gets num_classes, which every classifier takes (torchvision's and timm's too)
    data = {k: v for k, v in zip(DATA_ARGS, sizes, strict=True)
            if k in params or (takes_any and k == "num_classes")}  # fmt: skip
    shared = {k: opts[k] for k in SHARED_OPTIONS if k in params}
    return {**data, **shared, **opts["model_args"]}
