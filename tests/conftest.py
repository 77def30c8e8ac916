"""Shared fixtures: the real CIFAR-10 archive from ../shared/datasets, decoded once per cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweeper.data import ImageSet, SplitData, load_images, split

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO.parent / "shared" / "datasets").resolve()

# Decoded arrays are cached across test sessions; a fresh clone decodes once (about 10 s).
os.environ.setdefault("SWEEPER_CACHE_DIR", str(REPO / ".pytest_cache" / "sweeper-data"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    assert (DATASETS / "cifar10-jpeg.tar.gz").exists(), f"CIFAR-10 archive missing in {DATASETS}"
    return DATASETS


@pytest.fixture(scope="session")
def cifar10(datasets_dir: Path) -> ImageSet:
    return load_images("cifar10", str(datasets_dir))


@pytest.fixture(scope="session")
def small_cifar(cifar10: ImageSet) -> SplitData:
    """2,000 training and 1,000 validation images of the real data."""
    return split(cifar10, val_size=1000, train_size=2000, seed=0)
