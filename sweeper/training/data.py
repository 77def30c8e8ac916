"""Datasets: find, decode once into a cached uint8 array, and split (torch only when needed)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from filelock import FileLock

from sweeper.atomic import replacing
from sweeper.errors import SweeperError, first_line
from sweeper.spec.userfile import code_hash, is_reference, reference
from sweeper.stores.paths import cache_dir
from sweeper.training.config import TrainConfig
from sweeper.training.userdata import own_arrays

log = logging.getLogger(__name__)

CACHE_VERSION = 2
CACHE_IDLE_DAYS = float(os.environ.get("SWEEPER_CACHE_DAYS", "30"))  # then a cache is evicted
FIELDS = ("train_x", "train_y", "test_x", "test_y")  # the arrays of an ImageSet
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")
# name: (torchvision class, the folder it reads under data_dir, what to put there)
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz or cifar10-jpeg.tar.gz"),
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz or cifar100-jpeg.tar.gz"),
    "mnist": ("MNIST", "MNIST", "the MNIST/raw/*-ubyte.gz files"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST", "the FashionMNIST/raw/*-ubyte.gz files"),
}


@dataclass
class ImageSet:
    """A whole dataset as uint8 arrays [N, C, H, W] with int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


@dataclass
class SplitData:
    """Train / validation / test arrays of one run; the test split is for the final report only."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    split_hash: str  # identifies the exact train/validation images

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]

    @cached_property
    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the train split, on the 0..1 scale (once per split)."""
        import torch  # a fast multi-threaded sum; torch is loaded by then wherever this is used

        total, squares = np.zeros((2, self.in_channels))
        for start in range(0, len(self.train_x), 4096):  # chunks keep the peak memory small
            chunk = torch.from_numpy(self.train_x[start : start + 4096]).double()
            total += chunk.sum(dim=(0, 2, 3)).numpy()
            squares += chunk.pow_(2).sum(dim=(0, 2, 3)).numpy()
        count = self.train_x.size / self.in_channels
        mean = total / count
        std = np.sqrt(squares / count - mean**2)
        return (mean / 255).astype(np.float32), (std / 255).astype(np.float32)


def load_images(
    dataset: str, data_dir: str | None = None, image_size: int | None = None
) -> ImageSet:
    """Find a dataset by name or path, decoding it once into the cache. Processes that start on
    an empty cache at once (workers sharing a cache volume) decode it once: the others wait on
    its lock, then map what the first wrote."""
    if is_reference(dataset):  # your own function's arrays: keyed by its code and its output
        arrays = own_arrays(dataset, data_dir)
        name, origin = dataset.rpartition(":")[2], f"{dataset}|{image_size}"
        version = hashlib.sha256(code_hash(dataset).encode())
        for field in FIELDS:
            version.update(arrays[field].tobytes())
        version.update("|".join(arrays["classes"]).encode())
        identity: tuple = (CACHE_VERSION, origin, version.hexdigest())
        decode = functools.partial(ImageSet, **arrays)
    else:
        data_root = Path(data_dir or os.environ.get("SWEEPER_DATA_DIR") or "data")
        source = _find_source(dataset, data_root)
        st = source.stat()
        origin = f"{dataset}|{source.resolve()}|{image_size}"  # the same data, any version of it
        identity = (CACHE_VERSION, origin, st.st_size, st.st_mtime_ns)
        name = Path(dataset).name.split(".")[0]  # a known name stays itself
        decode = functools.partial(_decode, dataset, source)
    key = hashlib.sha256("|".join(map(str, identity)).encode()).hexdigest()[:16]
    cached = cache_dir() / f"{name}-{key}"
    if (cached / "classes.npy").exists():
        return _mapped(cached)
    with _locked(cached):
        if (cached / "classes.npy").exists():  # another process decoded it while this one waited
            return _mapped(cached)
        log.info("decoding %s into %s", origin, cached)
        images = decode()
        if image_size is not None:
            images.train_x = _resize(images.train_x, image_size)
            images.test_x = _resize(images.test_x, image_size)
        with contextlib.suppress(OSError), replacing(cached) as tmp:  # a read-only cache: no copy
            tmp.mkdir()
            for field in FIELDS:
                np.save(tmp / f"{field}.npy", getattr(images, field))
            np.save(tmp / "classes.npy", np.array(images.classes))
            (tmp / "origin.txt").write_text(origin)
        evict_caches(cached, origin)
    return images


def _decode(dataset: str, source: Path) -> ImageSet:
    if source.is_dir() and dataset in TORCHVISION_SETS:
        return _decode_torchvision(dataset, source)
    return _decode_image_folder(source)


@contextlib.contextmanager
def _locked(cached: Path) -> Iterator[None]:
    """Held while one process decodes into `cached`: the others wait for it, then map its copy."""
    lock = FileLock(cached.with_name(f".{cached.name}.lock"))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as error:
        raise SweeperError(
            f"data cache: cannot write in {cached.parent} ({error.strerror or error}); make it"
            " writable or point $SWEEPER_CACHE_DIR at a writable folder"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _mapped(cached: Path) -> ImageSet:
    """A cached dataset, memory-mapped copy-on-write: opening is instant, pages come from the OS
    cache as read. Its folder's mtime says when it was last used (see evict_caches)."""
    with contextlib.suppress(OSError):
        os.utime(cached)
    arrays = {field: np.load(cached / f"{field}.npy", mmap_mode="c") for field in FIELDS}
    return ImageSet(**arrays, classes=np.load(cached / "classes.npy").tolist())


def evict_caches(kept: Path, origin: str) -> list[Path]:
    """Remove the decoded datasets that `kept` replaces (the same data decoded by another cache
    version, or from a source file since changed) and those unused for CACHE_IDLE_DAYS; return
    them. A process still reading an evicted copy keeps it until it ends (the files stay mapped)."""
    idle_since = time.time() - CACHE_IDLE_DAYS * 86400
    evicted = []
    for folder in kept.parent.glob("*-*"):
        marker = folder / "origin.txt"
        if folder == kept or not (folder / "classes.npy").exists():
            continue  # not a decoded dataset (the MLflow store templates), or half written
        replaced = marker.exists() and marker.read_text() == origin
        if replaced or folder.stat().st_mtime < idle_since:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("evicted the data cache %s", folder)
            evicted.append(folder)
    return evicted


def split(
    images: ImageSet, val_size: float = 0.1, train_size: int | None = None, seed: int = 0
) -> SplitData:
    """Deterministic train/validation split of the train set, from the seed alone."""
    n = len(images.train_y)
    count = val_count(n, val_size, train_size)
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:count], order[count:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    hashed = (train_idx, val_idx, images.train_x[:16])  # same indices over other images differ
    digest = hashlib.sha256(b"".join(a.tobytes() for a in hashed))
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return SplitData(images.train_x[train_idx], images.train_y[train_idx], images.train_x[val_idx],
                     images.train_y[val_idx], images.test_x, images.test_y, images.classes,
                     digest.hexdigest()[:12])  # fmt: skip


def val_count(n: int, val_size: float | None, train_size: int | None = None) -> int:
    """How many of `n` training images validate; raises when the sizes do not fit in `n`.
    val_size None: not known yet (a study's space may set it), so train_size must fit in all n."""
    count = 0 if val_size is None else round(val_size * n) if val_size < 1 else int(val_size)
    if count >= n:
        raise SweeperError(f"val_size={val_size:g} must be smaller than the {n} training images")
    if train_size is not None and train_size > n - count:
        left = f" left after val_size={val_size:g}; lower one of them" if count else "; lower it"
        raise SweeperError(
            f"train_size={train_size} is larger than the {n - count} training images{left}"
        )
    return count


def prefetch_data(fixed: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Decode a study's dataset once, before any trial, so that workers start from the cache;
    sizes given as flags (`overrides`) that do not fit it fail here, once, not in every trial."""
    values = {**fixed, **overrides}
    dataset = values.get("dataset", "cifar10")
    if callable(dataset):  # your own data function
        dataset = reference(dataset, "dataset")
    images = load_images(dataset, values.get("data_dir"), values.get("image_size"))
    if {"val_size", "train_size"} & overrides.keys():  # flags: every trial trains on these sizes
        val_count(len(images.train_y), overrides.get("val_size"), overrides.get("train_size"))


def split_of(config: TrainConfig) -> SplitData:
    """The split a config trains on; made once per process for each distinct data setting."""
    return _split_of(config.dataset, config.data_dir, config.image_size, config.val_size,
                     config.train_size, config.split_seed)  # fmt: skip


@functools.cache
def _split_of(dataset: str, data_dir: str | None, image_size: int | None, val_size: float,
              train_size: int | None, seed: int) -> SplitData:  # fmt: skip
    return split(load_images(dataset, data_dir, image_size), val_size, train_size, seed)


def _find_source(dataset: str, data_dir: Path) -> Path:
    """The file or folder a dataset is read from; raises with where to put it."""
    if dataset not in TORCHVISION_SETS:  # a path
        path = Path(dataset).expanduser()
        if not path.exists() and (data_dir / dataset).exists():
            path = data_dir / dataset
        if not path.exists():
            names = ", ".join(TORCHVISION_SETS)
            raise SweeperError(
                f"dataset: '{dataset}' is neither a known name ({names}) nor an existing "
                "ImageFolder directory or .tar.gz archive"
            )
        return path
    if _torchvision_ready(dataset, data_dir):
        return data_dir
    for name in (dataset.replace("_", ""), dataset):
        # cifar10-jpeg.tar.gz, cifar10.tar.gz, never cifar100-jpeg.tar.gz: the name ends there
        exact = re.compile(rf"{re.escape(name)}(?![A-Za-z0-9]).*\.tar\.gz")
        for archive in sorted(data_dir.glob(f"{name}*.tar.gz")):
            if exact.fullmatch(archive.name) and not archive.name.endswith("-python.tar.gz"):
                return archive
    _download(dataset, data_dir)
    return data_dir


def _torchvision_ready(dataset: str, data_dir: Path) -> bool:
    """Whether torchvision finds complete files of this dataset in data_dir."""
    class_name, folder, _ = TORCHVISION_SETS[dataset]
    if not (data_dir / folder).exists():  # no need to import torchvision (seconds) to know
        return False
    import torchvision.datasets as tvd

    try:
        getattr(tvd, class_name)(str(data_dir), train=False, download=False)
    except (RuntimeError, OSError):
        return False
    return True


def _download(dataset: str, data_dir: Path) -> None:
    """torchvision's download into data_dir; a failed one leaves no folder it made behind."""
    import torchvision.datasets as tvd

    class_name, folder, files = TORCHVISION_SETS[dataset]
    made = _outermost_missing(data_dir / folder)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            getattr(tvd, class_name)(str(data_dir), train=train, download=True)
    except Exception as exc:  # any network or filesystem failure means the same to the user
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        reason = first_line(exc, 120)
        raise SweeperError(
            f"dataset: {dataset} is not in {data_dir} and could not be downloaded ({reason}); "
            f"put {files} in {data_dir} (or point --data-dir / SWEEPER_DATA_DIR at them)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _outermost_missing(path: Path) -> Path | None:
    """The first folder on the way to `path` that does not exist yet (None: all of them do)."""
    path = path.absolute()
    return next((p for p in [*reversed(path.parents), path] if not p.exists()), None)


def nchw(x: np.ndarray) -> np.ndarray:
    """uint8 images [N, C, H, W] from [N, H, W] or [N, H, W, C]."""
    return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2), np.uint8)


def _decode_torchvision(dataset: str, root: Path) -> ImageSet:
    import torchvision.datasets as tvd

    class_name, _, _ = TORCHVISION_SETS[dataset]
    train, test = (getattr(tvd, class_name)(str(root), train=t) for t in (True, False))
    return ImageSet(
        nchw(np.asarray(train.data)),
        np.asarray(train.targets, dtype=np.int64),
        nchw(np.asarray(test.data)),
        np.asarray(test.targets, dtype=np.int64),
        list(train.classes),
    )


def _decode_image_folder(source: Path) -> ImageSet:
    """Read an ImageFolder laid out as train/<class>/* and test/<class>/*, or a tarball of one."""
    files: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    if source.is_dir():
        for part in files:
            for file in sorted((source / part).glob("*/*")):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    files[part].append((file.parent.name, file.read_bytes()))
    elif source.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(source) as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                part = path.parent.parent.name  # of [folder/]train/<class>/<file>
                if member.isfile() and part in files and path.suffix.lower() in IMAGE_SUFFIXES:
                    files[part].append((path.parent.name, tar.extractfile(member).read()))
    else:
        raise SweeperError(f"dataset: {source} is a file but not a .tar.gz archive")
    if not files["train"] or not files["test"]:
        missing = "train/" if not files["train"] else "test/"
        raise SweeperError(
            f"dataset: {source} has no images under {missing}<class>/; "
            "an ImageFolder dataset needs train/<class>/*.jpg and test/<class>/*.jpg"
        )
    classes = sorted({label for label, _ in files["train"]})
    unknown = {label for label, _ in files["test"]} - set(classes)
    if unknown:
        raise SweeperError(f"dataset: {source} test/ has classes not in train/: {unknown}")
    return _decode_images(files, classes)


def _decode_images(files: dict[str, list[tuple[str, bytes]]], classes: list[str]) -> ImageSet:
    """Each part's images in class order, resized to the part's largest, in the first's mode."""
    from PIL import Image

    mode = "L" if Image.open(io.BytesIO(files["train"][0][1])).mode in ("L", "1") else "RGB"
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for part, items in files.items():
        items = sorted(items, key=lambda item: index[item[0]])
        images = [np.asarray(Image.open(io.BytesIO(data)).convert(mode)) for _, data in items]
        size = max(image.shape[:2] for image in images)
        for i, image in enumerate(images):
            if image.shape[:2] != size:
                images[i] = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
        arrays[f"{part}_x"] = nchw(np.stack(images))
        arrays[f"{part}_y"] = np.array([index[label] for label, _ in items], dtype=np.int64)
    return ImageSet(**arrays, classes=classes)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Resize all images once, in chunks, with antialiasing."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    import torch
    import torch.nn.functional as F

    out = np.empty((len(x), x.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(x), 4096):
        chunk = torch.from_numpy(x[start : start + 4096]).float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + 4096] = resized.round_().clamp_(0, 255).byte().numpy()
    return out
