import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.errors import SweeperError
from sweeper.training.batches import DeviceSplit, crop_flip
from sweeper.training.config import TrainConfig
from sweeper.training.data import ImageSet, load_images, split


def test_cifar10_archive_decodes_whole(cifar10: ImageSet) -> None:
    assert cifar10.train_x.shape == (50000, 3, 32, 32)
    assert cifar10.test_x.shape == (10000, 3, 32, 32)
    assert cifar10.train_x.dtype == np.uint8
    assert cifar10.classes[0] == "airplane" and cifar10.classes[-1] == "truck"
    assert np.bincount(cifar10.train_y).tolist() == [5000] * 10


def test_second_load_comes_from_the_cache(cifar10: ImageSet, datasets_dir: Path) -> None:
    again = load_images("cifar10", str(datasets_dir))
    assert isinstance(again.train_x, np.memmap)  # mapped from the cache, not decoded again
    assert np.array_equal(again.train_x[:100], cifar10.train_x[:100])


LOAD = """
import logging, sys, time
from pathlib import Path
from sweeper.training.data import load_images
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
print(int(load_images("cifar10", sys.argv[2]).train_x[:500].sum()))
"""


@pytest.mark.e2e
def test_two_fresh_processes_decode_the_data_once(tmp_path: Path, datasets_dir: Path) -> None:
    """Workers that start on an empty cache at the same moment: one decodes, the other waits on
    the lock and maps what the first wrote."""
    env = {**os.environ, "SWEEPER_CACHE_DIR": str(tmp_path / "cache")}
    go = tmp_path / "go"
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, str(go), str(datasets_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    time.sleep(3)  # both have imported numpy and wait for the start
    go.touch()
    outputs = [loader.communicate(timeout=300) for loader in loaders]
    assert [loader.returncode for loader in loaders] == [0, 0], outputs
    decodes = [line for _, err in outputs for line in err.splitlines() if "decoding" in line]
    assert len(decodes) == 1, outputs
    assert outputs[0][0] == outputs[1][0]  # the same images
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [
        decodes[0].rsplit("/", 1)[1]
    ]


def test_a_new_cache_evicts_the_one_it_replaces_and_idle_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(cache))
    load_images(str(folder))
    (first,) = cache.glob("pets-*")
    other_size = load_images(str(folder), image_size=8)  # other data: kept
    assert other_size.train_x.shape[2] == 8 and first.exists()
    idle = cache / "mnist-0123456789abcdef"
    idle.mkdir()
    np.save(idle / "classes.npy", np.array(["0"]))
    os.utime(idle, (time.time() - 40 * 86400,) * 2)
    os.utime(folder, (time.time() + 5,) * 2)  # the source changed: a new version of the data
    load_images(str(folder))
    names = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert not first.exists() and not idle.exists()
    assert len(names) == 2 and all(name.startswith("pets-") for name in names), names


def test_a_cache_folder_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _image_folder(tmp_path / "pets")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(SweeperError, match="data cache: cannot write in") as error:
        load_images(str(folder))
    assert "\n" not in str(error.value) and "SWEEPER_CACHE_DIR" in str(error.value)


def test_split_is_deterministic_and_sized(cifar10: ImageSet) -> None:
    a = split(cifar10, val_size=5000, seed=0)
    b = split(cifar10, val_size=5000, seed=0)
    c = split(cifar10, val_size=5000, seed=1)
    assert a.train_x.shape[0] == 45000 and a.val_x.shape[0] == 5000
    assert a.split_hash == b.split_hash != c.split_hash
    assert np.array_equal(a.val_y, b.val_y)
    wide = split(cifar10, val_size=10000, seed=0)
    assert (len(wide.train_y), len(wide.val_y)) == (40000, 10000)
    sliced = split(cifar10, val_size=5000, train_size=2000, seed=0)
    assert len(sliced.train_y) == 2000 and sliced.split_hash != a.split_hash


def test_val_size_is_a_fraction_or_a_number_of_images(cifar10: ImageSet) -> None:
    default = split(cifar10, TrainConfig().val_size)
    assert len(default.val_y) == 5000 and default.split_hash == split(cifar10, 5000).split_hash
    few = ImageSet(cifar10.train_x[:1500], cifar10.train_y[:1500], cifar10.test_x[:10],
                   cifar10.test_y[:10], cifar10.classes)  # fmt: skip
    assert (len(split(few).train_y), len(split(few).val_y)) == (1350, 150)
    with pytest.raises(SweeperError, match="val_size=2.5 is invalid; give a fraction"):
        TrainConfig.from_dict({"val_size": 2.5})


def test_split_rejects_impossible_sizes(cifar10: ImageSet) -> None:
    with pytest.raises(SweeperError, match="val_size=60000"):
        split(cifar10, val_size=60000)
    with pytest.raises(SweeperError, match="train_size=49000"):
        split(cifar10, val_size=5000, train_size=49000)


def test_train_statistics_match_the_dataset_readme(small_cifar) -> None:
    mean, std = small_cifar.mean_std
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=0.01)
    assert np.allclose(std, [0.2452, 0.2428, 0.2606], atol=0.01)


def _image_folder(root: Path, size: tuple[int, int] = (12, 10)) -> Path:
    rng = np.random.default_rng(0)
    for part, count in (("train", 3), ("test", 2)):
        for label in ("cats", "dogs"):
            folder = root / part / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_image_folder_directory_and_archive(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "pets")
    images = load_images(str(folder))
    assert images.classes == ["cats", "dogs"]
    assert images.train_x.shape == (6, 3, 12, 10)
    assert images.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="pets")
    packed = load_images(str(archive), image_size=8)
    assert packed.train_x.shape == (6, 3, 8, 8) and packed.test_x.shape == (4, 3, 8, 8)


def test_cifar10_does_not_read_a_cifar100_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cifar10 must not read cifar100-jpeg.tar.gz (which sorts before cifar10_small.tar.gz)."""
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    for archive, classes in (("cifar100-jpeg.tar.gz", ["apple", "bee"]),
                             ("cifar10_small.tar.gz", ["cats", "dogs"])):  # fmt: skip
        folder = _image_folder(tmp_path / archive.split(".")[0])
        for part in ("train", "test"):
            for old, new in zip(["cats", "dogs"], classes, strict=True):
                (folder / part / old).rename(folder / part / new)
        with tarfile.open(data / archive, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
    assert load_images("cifar10", str(data)).classes == ["cats", "dogs"]
    assert load_images("cifar100", str(data)).classes == ["apple", "bee"]


@pytest.mark.e2e
def test_image_size_resizes_once_at_load(datasets_dir: Path) -> None:
    images = load_images("cifar10", str(datasets_dir), image_size=8)
    assert images.train_x.shape == (50000, 3, 8, 8)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "no/such/folder"])
def test_missing_data_says_where_to_put_it(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(SweeperError, match="dataset:") as error:
        load_images(dataset, str(tmp_path))
    assert "\n" not in str(error.value)
    if dataset != "no/such/folder":
        assert f"in {tmp_path}" in str(error.value)


def test_folder_without_test_split_is_refused(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "pets")
    for file in (folder / "test").rglob("*.png"):
        file.unlink()
    with pytest.raises(SweeperError, match="no images under test/"):
        load_images(str(folder))


def test_crop_flip_takes_a_window_of_the_padded_image_mirrored_half_the_time() -> None:
    x = torch.randint(0, 255, (200, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets, flips = set(), 0
    for i in range(200):
        found = [
            (dy, dx, mirrored)
            for dy in range(5)
            for dx in range(5)
            for mirrored in (False, True)
            if torch.equal(out[i], _window(padded[i], dy, dx, mirrored))
        ]
        assert found, f"image {i} is not a (mirrored) crop"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 15  # offsets are drawn per image
    assert 60 < flips < 140


def _window(image: torch.Tensor, dy: int, dx: int, mirrored: bool) -> torch.Tensor:
    window = image[:, dy : dy + 8, dx : dx + 8]
    return window.flip(2) if mirrored else window


def test_device_batches_cover_the_split_once(small_cifar) -> None:
    mean, std = small_cifar.mean_std
    device_split = DeviceSplit(
        small_cifar.train_x, small_cifar.train_y, mean, std, torch.device("cpu")
    )
    labels = []
    for x, y in device_split.batches(300, torch.Generator().manual_seed(0), augment=True):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        labels.append(y)
    assert sorted(torch.cat(labels).tolist()) == sorted(small_cifar.train_y.tolist())
    plain = torch.cat([x for x, _ in device_split.batches(300)])
    assert plain.mean(dim=(0, 2, 3)).abs().max() < 0.01  # normalized by the train statistics
    assert (plain.std(dim=(0, 2, 3)) - 1).abs().max() < 0.01
