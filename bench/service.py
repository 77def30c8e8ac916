"""What the service costs: a sweep on 1 worker against the same configs in a bare loop, and the
speed-up of 2 workers over 1.

    .venv/bin/python bench/service.py [--data-dir ../shared/datasets]

Each measurement is a whole wall time, measured in this run: (a) one process that loads the data
and calls sweeper.train.train for every config of bench/service_study.py; (b) `sweeper launch` of
that study with 1 worker (process start-up, SQLite storage, MLflow runs, plots, checkpoints);
(c) the same with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sweeper.data import load_images, split
from sweeper.study import load_study
from sweeper.train import train

HERE = Path(__file__).resolve().parent
STUDY = HERE / "service_study.py"
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def bare(data_dir: str) -> float:
    study = load_study(STUDY)
    started = time.perf_counter()
    images = load_images("cifar10", data_dir)
    config0 = study.config({"model": "cnn2"}, {"data_dir": data_dir})
    data = split(images, config0.val_size, config0.train_size, config0.split_seed)
    for lr in study.sampler_options["search_space"]["lr"]:
        config = study.config(study.space(_Fixed(lr)), {"data_dir": data_dir, "device": "cpu"})
        train(config, data)
    return time.perf_counter() - started


class _Fixed:
    """Stands in for a trial: the grid value is given."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def suggest_categorical(self, name: str, choices: list) -> float:
        return self.lr


def service(data_dir: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as sweep_dir:
        started = time.perf_counter()
        subprocess.run(
            [SWEEPER, "launch", str(STUDY), "--dir", sweep_dir, "--workers", str(workers),
             "--data-dir", data_dir, "--no-progress", "--no-ensemble"],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    args = parser.parse_args()
    load_images("cifar10", args.data_dir)  # decode into the cache before any timing
    a = bare(args.data_dir)
    b = service(args.data_dir, 1)
    c = service(args.data_dir, 2)
    rows = [
        ("(a) bare loop, one process", a, 1.0),
        ("(b) sweeper launch, 1 worker", b, b / a),
        ("(c) sweeper launch, 2 workers", c, c / a),
    ]
    for name, seconds, ratio in rows:
        print(f"{name:32s} {seconds:7.1f} s  {ratio:.3f}x of (a)")
    print(f"service overhead (b/a - 1): {100 * (b / a - 1):+.1f}%; 2 workers vs 1: {b / c:.2f}x")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor()
    )  # fmt: skip
    print(f"machine: {os.cpu_count()} cores, {cpu}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
