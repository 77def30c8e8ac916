"""What the service costs: a sweep on 1 worker against the same configs in a bare loop, and the
speed-up of 2 workers over 1.

    .venv/bin/python bench/service.py [--data-dir ../shared/datasets] [--repeats 3]

Each measurement is the wall time of a whole process, measured in this run: (a) one Python
process that loads the data and calls sweeper.training.loop.train for every config of
bench/service_study.py; (b) `sweeper launch` of that study with 1 worker (process start-ups,
SQLite storage, MLflow runs, plots, checkpoints); (c) the same with 2 workers. --train-size and
--epochs scale every trial (both sides alike) to show fixed against per-trial costs. Besides
the wall ratio it prints what (b) spends outside training epochs beyond what (a) does: the
service's own cost, free of the noise in training speed between runs of a shared machine.
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
from mlflow import MlflowClient

from sweeper.spec.study import load_study
from sweeper.stores.paths import default_tracking_uri
from sweeper.training.data import load_images, split
from sweeper.training.loop import train

HERE = Path(__file__).resolve().parent
STUDY = HERE / "service_study.py"
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def bare_loop(overrides: dict) -> None:
    """(a): what a notebook does: load the data once, train every config in turn."""
    study = load_study(STUDY)
    images = load_images("cifar10", overrides["data_dir"])
    config0 = study.config({"model": "cnn2"}, overrides)
    data = split(images, config0.val_size, config0.train_size, config0.split_seed)
    seconds = 0.0
    for lr in study.sampler_options["search_space"]["lr"]:
        result = train(study.config(study.space(_Fixed(lr)), {**overrides, "device": "cpu"}), data)
        seconds += sum(epoch["seconds"] for epoch in result.history)
    print(seconds)  # the time inside training epochs, for main()


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


class _Fixed:
    """Stands in for a trial: the grid value is given."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def suggest_categorical(self, name: str, choices: list) -> float:
        return self.lr


def service(flags: list[str], workers: int) -> tuple[float, float]:
    """Wall time of a launch, and the time its trials spent inside training epochs."""
    with tempfile.TemporaryDirectory() as sweep_dir:
        command = [SWEEPER, "launch", str(STUDY), "--dir", sweep_dir, "--workers", str(workers),
                   "--no-progress", "--no-ensemble", *flags]  # fmt: skip
        wall, _ = timed(command)
        client = MlflowClient(default_tracking_uri(Path(sweep_dir)))
        experiment = client.get_experiment_by_name(load_study(STUDY).name)
        runs = client.search_runs([experiment.experiment_id])
        seconds = sum(
            m.value for r in runs for m in client.get_metric_history(r.info.run_id, "seconds")
        )
        return wall, seconds


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
        a, out = timed([sys.executable, __file__, "--bare", *flags])
        a_train = float(out.split()[-1])
        (b, b_train), (c, _) = service(flags, 1), service(flags, 2)
        # Time outside training epochs: what the service adds, without the noise of the
        # training speed itself, which moves by +-10% between runs on a shared machine.
        added = (b - b_train) - (a - a_train)
        rounds.append((a, b, c, added))
        print(f"round {i + 1}: (a) {a:.1f} s  (b) {b:.1f} s  (c) {c:.1f} s  b/a {b / a:.3f}  "
              f"outside training: (a) {a - a_train:.1f} s  (b) {b - b_train:.1f} s")  # fmt: skip
    a, b, c, added = (statistics.median(column) for column in zip(*rounds, strict=True))
    rows = [
        ("(a) bare loop, one process", a, 1.0),
        ("(b) sweeper launch, 1 worker", b, b / a),
        ("(c) sweeper launch, 2 workers", c, c / a),
    ]
    print(f"medians of {args.repeats} round(s):")
    for name, seconds, ratio in rows:
        print(f"{name:32s} {seconds:7.1f} s  {ratio:.3f}x of (a)")
    overhead = statistics.median(r[1] / r[0] for r in rounds)  # paired, round by round
    speedup = statistics.median(r[1] / r[2] for r in rounds)
    print(f"service overhead, wall (b/a - 1): {100 * (overhead - 1):+.1f}%; "
          f"2 workers vs 1: {speedup:.2f}x")  # fmt: skip
    print(f"service overhead, outside training epochs: {added:+.1f} s = "
          f"{100 * added / a:+.1f}% of (a)")  # fmt: skip
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor()
    )  # fmt: skip
    print(f"trials: train_size={args.train_size or 'study'}, epochs={args.epochs or 'study'}")
    print(f"machine: {os.cpu_count()} cores, {cpu}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
