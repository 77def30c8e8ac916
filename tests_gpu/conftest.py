"""CUDA tests: `make test-gpu` on a machine with an NVIDIA GPU; anywhere else they stop at once.

Not collected by `make test` (pyproject's testpaths is tests/). They read the real CIFAR-10
archive in $SWEEPER_DATA_DIR (default ../shared/datasets), decoded once into $SWEEPER_CACHE_DIR
(default .pytest_cache/sweeper-data, as tests/ does), and run `sweeper` as
`python -m sweeper.cli`, so the package need not be installed (bench/gpu.sh sets PYTHONPATH).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sweeper.training.data import ImageSet, SplitData, load_images, split

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "tests_gpu: no CUDA device here; run them on a GPU machine (make test-gpu, bench/gpu.sh)"
NO_CUDA_EXIT = 1  # not run is not passed

os.environ.setdefault("SWEEPER_CACHE_DIR", str(REPO / ".pytest_cache" / "sweeper-data"))
os.environ.setdefault("SWEEPER_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
DATASETS = Path(os.environ["SWEEPER_DATA_DIR"]).resolve()


def pytest_configure(config: pytest.Config) -> None:
    """One line and a non-zero exit where there is no GPU: no test is skipped one by one."""
    if not torch.cuda.is_available():
        pytest.exit(NO_CUDA, returncode=NO_CUDA_EXIT)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    archive = DATASETS / "cifar10-jpeg.tar.gz"
    assert archive.exists(), f"CIFAR-10 archive missing: {archive}; set SWEEPER_DATA_DIR"
    return DATASETS


@pytest.fixture(scope="session")
def cifar10(datasets_dir: Path) -> ImageSet:
    return load_images("cifar10", str(datasets_dir))


@pytest.fixture(scope="session")
def small_cifar(cifar10: ImageSet) -> SplitData:
    """2,000 training and 1,000 validation images of the real data."""
    return split(cifar10, val_size=1000, train_size=2000, seed=0)
