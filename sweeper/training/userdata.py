"""Your own data: a function that returns images and labels as arrays or tensors, checked and
turned into what every dataset becomes (uint8 images [N, C, H, W], int64 labels, class names).

The function is named like a model builder (a function of the study file, "package.module:
function" or "file.py:function"); it takes no arguments, or `data_dir` if it names it. It
returns (train_x, train_y, test_x, test_y) or (..., classes), or a dict with those keys. Images
are uint8 (0..255) or float (0..1), NCHW or NHWC (or NHW for one channel), square, any size.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from sweeper.errors import SweeperError
from sweeper.spec.userfile import raised, resolve

KEYS = ("train_x", "train_y", "test_x", "test_y", "classes")


def own_arrays(ref: str, data_dir: str | None) -> dict[str, Any]:
    """Call the data function and check what it returns: the ImageSet's fields, or one line."""
    function = resolve(ref, "dataset")
    name = f"dataset: {ref.rpartition(':')[2]}()"
    takes_dir = "data_dir" in inspect.signature(function).parameters
    try:
        out = function(data_dir=data_dir) if takes_dir else function()
    except Exception as exc:
        raise SweeperError(raised(name, exc)) from None
    fields = _fields(out, name)
    train_x, test_x = (_images(fields[key], f"{name}: {key}") for key in ("train_x", "test_x"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise SweeperError(
            f"{name}: train_x images are {list(train_x.shape[1:])} and test_x images"
            f" {list(test_x.shape[1:])} ([C, H, W]); give both sets the same shape"
        )
    train_y = _labels(fields["train_y"], len(train_x), f"{name}: train_y")
    test_y = _labels(fields["test_y"], len(test_x), f"{name}: test_y")
    classes = _classes(fields.get("classes"), train_y, test_y, name)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": classes}  # fmt: skip


def _fields(out: Any, name: str) -> dict[str, Any]:
    if isinstance(out, Mapping):
        unknown = set(out) - set(KEYS)
        missing = set(KEYS[:4]) - set(out)
        if unknown or missing:
            raise SweeperError(
                f"{name} returned a dict with keys {sorted(out)}; it needs train_x, train_y,"
                " test_x, test_y (and may have classes)"
            )
        return dict(out)
    if isinstance(out, tuple | list) and len(out) in (4, 5):
        return dict(zip(KEYS, out, strict=False))
    raise SweeperError(
        f"{name} returned {type(out).__name__}; return (train_x, train_y, test_x, test_y) or"
        " (..., classes), or a dict with those keys"
    )


def _array(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise SweeperError(f"{where}: got {type(value).__name__}; give a numpy array or a tensor")
    return value


def _images(value: Any, where: str) -> np.ndarray:
    """uint8 [N, C, H, W] from uint8 or 0..1 float images, NCHW, NHWC or NHW."""
    x = _array(value, where)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise SweeperError(f"{where}: shape {list(x.shape)}; give images as [N, C, H, W],"
                           " [N, H, W, C] or [N, H, W]")  # fmt: skip
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise SweeperError(f"{where}: shape {list(x.shape)}; images have 1 or 3 channels,"
                           " first (NCHW) or last (NHWC)")  # fmt: skip
    if x.shape[2] != x.shape[3] or len(x) == 0:
        raise SweeperError(f"{where}: shape {list(x.shape)}; give at least one image, square"
                           " (H = W): crop or resize them")  # fmt: skip
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            span = f"{x.min():g}..{x.max():g}"
            raise SweeperError(f"{where}: float images must lie in 0..1 (these span {span});"
                               " scale them, or give uint8")  # fmt: skip
        return np.ascontiguousarray((x * 255).round().astype(np.uint8))
    raise SweeperError(f"{where}: dtype {x.dtype}; give uint8 (0..255) or float (0..1) images")


def _labels(value: Any, count: int, where: str) -> np.ndarray:
    y = _array(value, where)
    if y.ndim != 1 or len(y) != count or y.dtype.kind not in "iu":
        raise SweeperError(
            f"{where}: shape {list(y.shape)} of {y.dtype}; give one integer class index per image"
            f" ({count})"
        )
    if y.min() < 0:
        raise SweeperError(f"{where}: label {y.min()}; class indices start at 0")
    return y.astype(np.int64)


def _classes(value: Any, train_y: np.ndarray, test_y: np.ndarray, name: str) -> list[str]:
    unseen = sorted(set(np.unique(test_y).tolist()) - set(np.unique(train_y).tolist()))
    if unseen:
        raise SweeperError(f"{name}: test_y has classes {unseen[:10]} that train_y lacks;"
                           " the test set must use the training set's classes")  # fmt: skip
    count = int(train_y.max()) + 1
    if value is None:
        return [str(i) for i in range(count)]
    classes = [str(c) for c in value]
    if len(classes) < count:
        raise SweeperError(f"{name}: {len(classes)} class names for labels up to {count - 1};"
                           " give one name per class index")  # fmt: skip
    return classes
