"""What the service costs: a sweep on 1 worker against the same configs in a bare loop, and the
speed-up of 2 workers over 1.

    .venv/bin/python bench/service.py [--data-dir ../shared/datasets] [--repeats 3]

Each measurement is the wall time of a whole process, measured in this run: (a) one Python
process that loads the data and calls sweeper.train.train for every config of
bench/service_study.py; (b) `sweeper launch` of that study with 1 worker (process start-ups,
SQLite storage, MLflow runs, plots, checkpoints); (c) the same with 2 workers. --train-size and
--epochs scale every trial (both sides alike) to show fixed against per-trial costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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


def bare_loop(overrides: dict) -> None:
    """(a): what a notebook does: load the data once, train every config in turn."""
    study = load_study(STUDY)
    images = load_images("cifar10", overrides["data_dir"])
    config0 = study.config({"model": "cnn2"}, overrides)
    data = split(images, config0.val_size, config0.train_size, config0.split_seed)
    for lr in study.sampler_options["search_space"]["lr"]:
        train(study.config(study.space(_Fixed(lr)), {**overrides, "device": "cpu"}), data)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


class _Fixed:
    """Stands in for a trial: the grid value is given."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def suggest_categorical(self, name: str, choices: list) -> float:
        return self.lr


def service(flags: list[str], workers: int) -> float:
    with tempfile.TemporaryDirectory() as sweep_dir:
        return timed([SWEEPER, "launch", str(STUDY), "--dir", sweep_dir, "--workers", str(workers),
                      "--no-progress", "--no-ensemble", *flags])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    parser.add_argument("--train-size", type=int, help="training images per trial")
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (a), (b), (c)")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # runs (a)
    args = parser.parse_args()
    overrides = {"data_dir": args.data_dir}
    flags = ["--data-dir", args.data_dir]
    for key in ("train_size", "epochs"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
            flags += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.bare:
        bare_loop(overrides)
        return
    load_images("cifar10", args.data_dir)  # decode into the cache before any timing
    rounds = []
    for i in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits all three
        rounds.append((timed([sys.executable, __file__, "--bare", *flags]), service(flags, 1),
                       service(flags, 2)))  # fmt: skip
        if args.repeats > 1:
            a, b, c = rounds[-1]
            print(f"round {i + 1}: (a) {a:.1f} s  (b) {b:.1f} s  (c) {c:.1f} s  b/a {b / a:.3f}")
    a, b, c = (statistics.median(column) for column in zip(*rounds, strict=True))
    if args.repeats > 1:
        print(f"medians of {args.repeats} rounds:")
    rows = [
        ("(a) bare loop, one process", a, 1.0),
        ("(b) sweeper launch, 1 worker", b, b / a),
        ("(c) sweeper launch, 2 workers", c, c / a),
    ]
    for name, seconds, ratio in rows:
        print(f"{name:32s} {seconds:7.1f} s  {ratio:.3f}x of (a)")
    overhead = statistics.median(b_i / a_i for a_i, b_i, _ in rounds)  # paired, round by round
    speedup = statistics.median(b_i / c_i for _, b_i, c_i in rounds)
    print(f"service overhead (b/a - 1): {100 * (overhead - 1):+.1f}%; "
          f"2 workers vs 1: {speedup:.2f}x")  # fmt: skip
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor()
    )  # fmt: skip
    print(f"trials: train_size={args.train_size or 'study'}, epochs={args.epochs or 'study'}")
    print(f"machine: {os.cpu_count()} cores, {cpu}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
