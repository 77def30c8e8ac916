"""What two workers can gain over one on this machine: one process with N torch threads against
N one-thread processes at once, on the same training and validation work.

    .venv/bin/python bench/cores.py [--epochs 4] [--model cnn2]

bench/service.py measures sweeper's 2 workers against 1; this bounds that ratio from below the
service: a worker with all cores' threads already uses them (intra-op parallelism), and N
one-thread workers can only add what those threads leave idle. Each process trains --epochs
epochs of 4,000 random images (batch 128) and predicts 4,000 (batch 256), channels_last fp32,
after one warm-up epoch; epochs per second are summed over the processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

IMAGES = 4000


def one_process(threads: int, epochs: int, model_name: str) -> None:
    """Train and predict; print seconds per epoch."""
    import torch

    from sweeper.training.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(IMAGES, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (IMAGES,))
    model = build_model({"model": model_name, "batch_norm": True})
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch() -> None:
        model.train()
        for i in range(0, IMAGES, 128):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, IMAGES, 256):
                model(x[i : i + 256])

    epoch()
    started = time.perf_counter()
    for _ in range(epochs):
        epoch()
    print((time.perf_counter() - started) / epochs)


def rate(processes: int, threads: int, args: argparse.Namespace) -> float:
    """Epochs per second of `processes` processes of `threads` threads, run at once."""
    command = [sys.executable, __file__, "--one", str(threads), "--epochs", str(args.epochs),
               "--model", args.model]  # fmt: skip
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    return sum(1 / float(p.communicate()[0]) for p in running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default="cnn2")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # runs one process
    args = parser.parse_args()
    if args.one:
        one_process(args.one, args.epochs, args.model)
        return
    cores = os.cpu_count() or 1
    single = rate(1, 1, args)
    threaded = rate(1, cores, args)
    processes = rate(cores, 1, args)
    print(f"{cores} cores, {args.model}, {args.epochs} epochs of {IMAGES} images per process")
    rows = [("1 process, 1 thread", single), (f"1 process, {cores} threads", threaded),
            (f"{cores} processes, 1 thread each", processes)]  # fmt: skip
    for name, value in rows:
        print(f"{name:<32} {value:.3f} epochs/s  {value / single:.2f}x")
    print(f"{cores} workers over 1 at best: {processes / threaded:.2f}x")


if __name__ == "__main__":
    main()
