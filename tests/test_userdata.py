"""Your own data: a function's arrays or tensors, checked in one line each, decoded once into the
cache keyed by the function's code and output."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sweeper_here

from sweeper.errors import SweeperError
from sweeper.training.config import TrainConfig
from sweeper.training.data import load_images, split_of

MODULE = '''
import numpy as np
import torch

from sweeper.training.data import load_images

SHAPE = {"train": 600, "test": 100}


def cifar(data_dir):
    """Real CIFAR-10 images as a user holds them: tensors, channels last, floats 0..1."""
    images = load_images("cifar10", data_dir)
    train, test = (np.random.default_rng(0).permutation(len(y))[:SHAPE[part]]
                   for part, y in (("train", images.train_y), ("test", images.test_y)))
    nhwc = lambda x: torch.from_numpy(x.transpose(0, 2, 3, 1) / 255).float()
    return {"train_x": nhwc(images.train_x[train]),
            "train_y": torch.from_numpy(images.train_y[train]),
            "test_x": nhwc(images.test_x[test]),
            "test_y": torch.from_numpy(images.test_y[test])}


def gray():
    x = np.arange(20 * 28 * 28, dtype=np.uint8).reshape(20, 28, 28)
    return x, np.arange(20) % 4, x[:5], np.arange(5) % 4, ["a", "b", "c", "d"]


def broken(kind):
    x = np.zeros((10, 3, 8, 8), np.uint8)
    y = np.arange(10) % 2
    if kind == "raises":
        return 1 / 0
    return {
        "not_square": (np.zeros((10, 3, 8, 6), np.uint8), y, x, y),
        "five_channels": (np.zeros((10, 5, 8, 8), np.uint8), y, x, y),
        "float_255": (x.astype(np.float32) + 200, y, x, y),
        "labels_short": (x, y[:9], x, y),
        "labels_float": (x, y.astype(np.float32), x, y),
        "negative": (x, y - 1, x, y),
        "new_test_class": (x, y, x, y + 1),
        "shapes_differ": (x, y, np.zeros((10, 3, 16, 16), np.uint8), y),
        "few_names": (x, y, x, y, ["only one"]),
        "a_list": [x, y],
        "keys": {"images": x},
    }[kind]
'''


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"mydata_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    yield name
    sys.modules.pop(name, None)


def test_tensors_channels_last_in_0_1_become_the_cached_uint8_set(
    data_module: str, datasets_dir: Path, tmp_path: Path
) -> None:
    ref = f"{data_module}:cifar"
    images = load_images(ref, str(datasets_dir))
    real = load_images("cifar10", str(datasets_dir))
    assert images.train_x.shape == (600, 3, 32, 32) and images.train_x.dtype == np.uint8
    train = np.random.default_rng(0).permutation(len(real.train_y))[:600]
    assert np.array_equal(images.train_x, real.train_x[train])  # 0..1 floats back to 0..255
    assert np.array_equal(images.train_y, real.train_y[train])
    assert images.classes == [str(i) for i in range(10)]  # no names given: the indices
    cached = sorted(p.name for p in (tmp_path / "cache").glob("cifar-*"))
    assert len(cached) == 1
    again = load_images(ref, str(datasets_dir))  # the same output: mapped from the cache
    assert isinstance(again.train_x, np.memmap)
    sys.modules[data_module].SHAPE["train"] = 700  # its output changes: decoded again
    assert len(load_images(ref, str(datasets_dir)).train_y) == 700
    assert sorted(p.name for p in (tmp_path / "cache").glob("cifar-*")) != cached
    assert len(list((tmp_path / "cache").glob("cifar-*"))) == 1  # the old copy evicted


def test_a_config_names_the_function_and_splits_its_data_like_any_dataset(
    data_module: str,
) -> None:
    gray = importlib.import_module(data_module).gray
    config = TrainConfig.from_dict({"dataset": gray, "model": "mlp", "val_size": 4})
    assert config.dataset == f"{data_module}:gray"
    data = split_of(config)
    assert (data.in_channels, data.image_size, data.classes) == (1, 28, ["a", "b", "c", "d"])
    assert len(data.val_y) == 4 and len(data.train_y) == 16
    assert torch.from_numpy(data.train_x).dtype == torch.uint8


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_square", "train_x: shape [10, 3, 8, 6]; give at least one image, square"),
        ("five_channels", "images have 1 or 3 channels"),
        ("float_255", "float images must lie in 0..1 (these span 200..200)"),
        ("labels_short", "train_y: shape [9] of int64; give one integer class index per image"),
        ("labels_float", "train_y: shape [10] of float32"),
        ("negative", "train_y: label -1; class indices start at 0"),
        ("new_test_class", "test_y has classes [2] that train_y lacks"),
        ("shapes_differ", "train_x images are [3, 8, 8] and test_x images [3, 16, 16]"),
        ("few_names", "1 class names for labels up to 1"),
        ("a_list", "returned list; return (train_x, train_y, test_x, test_y)"),
        ("keys", "returned a dict with keys ['images']; it needs train_x"),
        ("raises", "raised ZeroDivisionError: division by zero ("),
    ],
)
def test_bad_data_is_one_line_naming_what_is_wrong(
    data_module: str, tmp_path: Path, kind: str, expected: str
) -> None:
    module = tmp_path / f"{data_module}.py"
    module.write_text(MODULE + f"\n\ndef bad():\n    return broken({kind!r})\n")
    with pytest.raises(SweeperError) as error:
        load_images(f"{data_module}:bad")
    assert str(error.value).startswith("dataset: bad()") and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_launch_on_bad_data_stops_before_any_worker(data_module: str, tmp_path: Path) -> None:
    study = tmp_path / "study.py"
    study.write_text(
        "from sweeper import Study\n"
        f"from {data_module} import broken\n"
        "def bad_labels():\n    return broken('negative')\n"
        "study = Study(name='own', space=lambda t: {'model': 'mlp'},"
        " fixed={'dataset': bad_labels})\n"
    )
    done = sweeper_here("launch", str(study), "--dir", str(tmp_path / "sweep"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "dataset: bad_labels(): train_y: label -1" in done.stderr
