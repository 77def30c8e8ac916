"""Accuracy against size (issue 18): studies/pareto.py's smallest model within 1 point of the best
validation accuracy, against the best model, side by side in one run.

    .venv/bin/python bench/pareto.py [--trials 12] [--epochs 4] [--train-size N] [--points 1.0]

Launches studies/pareto.py (val_acc against params) in a fresh temporary --dir, then takes the
best trial by validation accuracy and the one `sweeper export --pick "smallest within 1.0"`
picks, and measures both here, one after the other: parameters, validation and test accuracy
(the test split is used only here), and milliseconds per image at batch 1 and 256 on the CPU
(eval mode, after warm-up; the same code that scores latency_ms objectives).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from sweeper.ensemble.evaluate import one_model
from sweeper.spec.objectives import best_by_metric, latency_ms, pick
from sweeper.stores.storage import make_storage
from sweeper.stores.tracking.checkpoints import fetch_checkpoint
from sweeper.training.config import TrainConfig
from sweeper.training.data import split_of

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("SWEEPER_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")


def measure(trial: optuna.trial.FrozenTrial, tracking_uri: str, folder: Path) -> dict:
    """Parameters, accuracies and CPU latency of a trial's best weights."""
    model = one_model(fetch_checkpoint(tracking_uri, trial.user_attrs["checkpoint"], folder))
    config = TrainConfig.from_dict(trial.user_attrs["config"])
    data = split_of(config)  # the trial's own split
    accuracy = {
        "val": accuracy_of(model, data.val_x, data.val_y),
        "test": accuracy_of(model, data.test_x, data.test_y),
    }
    return {
        "trial": trial.number,
        "model": config.model,
        "params": sum(p.numel() for p in model.members[0].parameters()),
        "val_acc": accuracy["val"],
        "test_acc": accuracy["test"],
        "net": model,
        "shape": tuple(data.val_x.shape[1:]),
    }


def latencies(rows: list[dict], repeats: int = 5) -> None:
    """ms per image at batch 1 and 256, the models measured in turn, the median of `repeats`."""
    for batch in (1, 256):
        times: list[list[float]] = [[] for _ in rows]
        for _ in range(repeats):
            for row, kept in zip(rows, times, strict=True):
                kept.append(latency_ms(row["net"], torch.device("cpu"), row["shape"], batch))
        for row, kept in zip(rows, times, strict=True):
            row[f"ms_b{batch}"] = statistics.median(kept)


@torch.inference_mode()
def accuracy_of(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    right = 0
    for start in range(0, len(x), batch):
        images = torch.from_numpy(np.asarray(x[start : start + batch])).float() / 255
        right += int((model(images).argmax(1).numpy() == y[start : start + batch]).sum())
    return right / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--points", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--study-dir", help="measure a study launched before instead")
    args = parser.parse_args()
    folder = Path(args.study_dir or tempfile.mkdtemp(prefix="sweeper-pareto-"))
    launch = [sys.executable, "-m", "sweeper.cli", "launch", str(ROOT / "studies" / "pareto.py"),
              "--dir", str(folder), "--workers", str(args.workers), "--trials", str(args.trials),
              "--epochs", str(args.epochs), "--no-progress", "--data-dir", DATA_DIR]  # fmt: skip
    if args.train_size:
        launch += ["--train-size", str(args.train_size)]
    if not args.study_dir:
        started = time.time()
        subprocess.run(launch, check=True)
        print(f"launch: {time.time() - started:.0f} s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(f"sqlite:///{folder}/optuna.db")
    study = optuna.load_study(study_name="pareto", storage=storage)
    uri = f"sqlite:///{folder}/mlflow.db"
    smallest = pick(study, f"smallest within {args.points}")
    rows = [
        ("best val_acc", measure(best_by_metric(study), uri, folder)),
        (f"smallest within {args.points:g}", measure(smallest, uri, folder)),
    ]
    front = sorted(study.best_trials, key=lambda t: t.values[1])  # the whole trade-off
    rows += [("on the front", measure(t, uri, folder)) for t in front]
    latencies([row for _, row in rows])
    best = rows[0][1]
    print("| model | trial | params | val acc | test acc | ms/image batch 1 | batch 256 |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows:
        print(f"| {name}: {row['model']} | {row['trial']} | {row['params']:,} "
              f"({row['params'] / best['params']:.2f}x) | {row['val_acc']:.2%} | "
              f"{row['test_acc']:.2%} | {row['ms_b1']:.3f} ({row['ms_b1'] / best['ms_b1']:.2f}x) | "
              f"{row['ms_b256']:.4f} ({row['ms_b256'] / best['ms_b256']:.2f}x) |")  # fmt: skip
    print(f"study files: {folder}")


if __name__ == "__main__":
    main()
