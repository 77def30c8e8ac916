"""Training throughput on the CPU: sweeper's loop vs the documents' DataLoader + PIL transforms,
and sweeper's CPU fast path (auto bf16 + channels_last) vs its plain fp32 loop.

Both paths train the same model (same seed) for the same number of SGD steps (lr 0.05,
momentum 0.9, batch 128) with random crop (padding 4) + horizontal flip:

(a) a torchvision-style Dataset returning PIL images, transforms.Compose([RandomCrop(32, 4),
    RandomHorizontalFlip(), ToTensor(), Normalize]), DataLoader(num_workers=2), a plain loop;
(b) sweeper's train() on the same uint8 images (train_size = steps * 128, one epoch), fp32
    in the contiguous layout (bf16=false, channels_last=false: the loop before the fast path);
(c) the same with the defaults: bf16 and channels_last on auto (what this machine gets).

Timed: the wall time of the training steps only, after a few warm-up steps. For (a) the clock
starts before iter(loader), so worker start-up and the first-batch latency are included, as a
real epoch pays them; for (b) it is history[0]["images_per_s"] (validation excluded).

    .venv/bin/python bench/pipeline.py [--models cnn2 resnet20] [--steps N] [--threads N]

(SWEEPER_CACHE_DIR picks where the decoded CIFAR-10 cache lives; SWEEPER_DATA_DIR where the
tarball is, default ../shared/datasets.)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData, load_images, split
from sweeper.training.loop import resolved, train
from sweeper.training.models import build_model

BATCH, LR, MOMENTUM, SEED, VAL_SIZE, WARMUP = 128, 0.05, 0.9, 0, 500, 3
DEFAULT_STEPS = {"cnn2": 200, "resnet20": 60}
HEADING = "## Data pipeline: sweeper loop vs DataLoader + PIL transforms"
ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
DATA_DIR = os.environ.get("SWEEPER_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")


class PilDataset(torch.utils.data.Dataset):
    """Like torchvision.datasets.CIFAR10: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x.transpose(0, 2, 3, 1), y, transform  # NCHW -> NHWC

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def dataloader_images_per_s(name: str, data: SplitData, steps: int) -> float:
    """(a): the documents' pipeline; returns training images/s over `steps` steps."""
    mean, std = data.mean_std
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ]
    )
    dataset = PilDataset(data.train_x, data.train_y, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=False
    )
    torch.manual_seed(SEED)
    model = build_model({"model": name})
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()

    def run(limit: int) -> int:
        model.train()
        seen = 0
        for step, (x, y) in enumerate(loader):
            if step == limit:
                break
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    run(WARMUP)  # warm-up on its own iterator (its workers are shut down before timing)
    started = time.perf_counter()
    seen = run(steps)  # a fresh iterator: worker start-up and first batch are timed
    return seen / (time.perf_counter() - started)


def sweeper_images_per_s(name: str, data: SplitData, steps: int, threads: int, fast: bool) -> float:
    """(b) or, when fast, (c): sweeper's train() for one epoch of exactly `steps` batches."""

    def config(train_size: int) -> TrainConfig:
        return TrainConfig(
            model=name,
            optimizer="sgd",
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=0.0,
            batch_size=BATCH,
            epochs=1,
            augment=True,
            val_size=VAL_SIZE,
            train_size=train_size,
            seed=SEED,
            device="cpu",
            threads=threads,
            bf16=None if fast else False,
            channels_last=None if fast else False,
        )

    n = WARMUP * BATCH
    warm = dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    train(config(n), warm)
    result = train(config(steps * BATCH), data)
    return result.history[0]["images_per_s"]


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section under `heading` in a Markdown file (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores (nproc), {cpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--steps", type=int, help="timed steps per path (default: per model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; medians shown")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = load_images("cifar10", DATA_DIR)

    rows = []
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS.get(name, 30)
        data = split(images, VAL_SIZE, steps * BATCH, SEED)
        runs: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        for _ in range(args.repeats):  # alternate, so load from other processes hits all three
            runs["a"].append(dataloader_images_per_s(name, data, steps))
            runs["b"].append(sweeper_images_per_s(name, data, steps, args.threads, fast=False))
            runs["c"].append(sweeper_images_per_s(name, data, steps, args.threads, fast=True))
        a, b, c = (statistics.median(runs[k]) for k in "abc")
        shown = {
            k: f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in runs.items()
        }
        print(
            f"{name}: {steps} steps x {args.repeats}  (a) DataLoader+PIL {shown['a']}  "
            f"(b) sweeper fp32 {shown['b']}  (c) sweeper auto {shown['c']} img/s  "
            f"c/a {c / a:.2f}x  c/b {c / b:.2f}x",
            flush=True,
        )
        rows.append(
            f"| {name} | {steps} | {shown['a']} | {shown['b']} | {shown['c']} | {c / a:.2f}x "
            f"| {c / b:.2f}x |"
        )

    if not args.no_write:
        command = shlex.join([".venv/bin/python", "bench/pipeline.py", *sys.argv[1:]])
        notes = (
            f"Batch {BATCH}, SGD lr {LR} momentum {MOMENTUM}, random crop (pad 4) + flip, "
            f"{WARMUP} warm-up steps first; median (min-max) of {args.repeats} alternating runs. "
            "Timed: the training steps only. (a) includes DataLoader worker start-up and the "
            "first-batch latency (num_workers=2); (b) and (c) are `history[0]['images_per_s']` "
            f"(validation excluded). (c) used bf16={resolved(TrainConfig(device='cpu')).bf16} "
            "(auto: native bf16 on this CPU or not) and channels_last."
        )
        body = "\n".join(
            [
                f"{datetime.date.today()}, {machine()}, {args.threads} torch threads.",
                "",
                "| model | steps | (a) DataLoader + PIL | (b) sweeper fp32, contiguous "
                "| (c) sweeper auto | c/a | c/b |",
                "|---|---|---|---|---|---|---|",
                *rows,
                "",
                notes,
                "",
                f"Command: `{command}`",
            ]
        )
        write_section(BENCHMARKS, HEADING, body)
        print(f"wrote '{HEADING}' to {BENCHMARKS}")


if __name__ == "__main__":
    main()
