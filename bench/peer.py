"""The sweep a user writes by hand, against `sweeper launch` on the same work (issue 14, part 4).

    .venv/bin/python bench/peer.py [--repeats 3] [--trials 6] [--epochs 2] [--train-size 2000]
                                   [--loader-workers 2] [--skip-2] [--markdown FILE]

(peer) one Python process, written as a competent user of the libraries writes it: Optuna (TPE,
the median pruner: studies/quickstart.py's sampler and pruner, and its search space written out
again by hand), optuna-integration's MLflowCallback with `track_in_mlflow` (one MLflow run per
trial: params, the objective, per-epoch metrics, the best epoch's state_dict as an artifact) on a
SQLite store like sweeper's, and the course documents' data pipeline: a CIFAR-10 Dataset that
returns PIL images (torchvision.datasets.CIFAR10's __getitem__), transforms.ToTensor + Normalize
(quickstart trains without augmentation), DataLoader(num_workers=2) for training and for
validation (batch 256, as sweeper evaluates on a CPU), torch.set_num_threads(cores) (sweeper's
threads).
It trains cnn2 (sweeper's build_model, the document 003 CNN) on the same 2,000 training
images and validates on the same 5,000 (split_seed 0), fp32, with OneCycleLR.
(sweeper) `sweeper launch studies/quickstart.py --trials 6 --epochs 2 --train-size 2000
--no-ensemble --no-progress` in a fresh temporary --dir, with --workers 1 and with --workers 2.

Both sides are timed as whole processes (imports, store creation, every trial, exit). The peer's
sampler has the seed of sweeper's worker w0, so the peer and the 1-worker launch draw the same 6
configurations (all 6 are TPE start-up draws; 2 workers draw others); the pruner may still stop
different trials, so each side's epochs trained are printed. Rounds run the three in rotating
order; medians of --repeats rounds and the per-round ratios' medians are printed.
Issue 14's target: sweeper with 1 worker takes at most 40% of the peer's wall time.

CIFAR-10 comes from sweeper's decoded cache of $SWEEPER_DATA_DIR (default ../shared/datasets, a
JPEG copy): torchvision's CIFAR10 class cannot read it (it wants the python pickles, checked by
MD5), so the peer holds the same uint8 HWC arrays that CIFAR10.data holds. Loading them from the
memory-mapped cache takes milliseconds where CIFAR10 unpickles for about a second: in the peer's
favour.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

from pipeline import machine  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUDY = ROOT / "studies" / "quickstart.py"
SWEEPER = str(Path(sys.executable).parent / "sweeper")
DATA_DIR = os.environ.get("SWEEPER_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
VAL_SIZE, SPLIT_SEED, EVAL_BATCH = 5000, 0, 256  # quickstart's val_size; sweeper's CPU defaults
# The documents' normalization (SEEDS.md); sweeper computes the train slice's own.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# sweeper's worker loop seeds its sampler with study.seed + 1000 * crc32("<name>/<trials drawn>"):
# worker w0's draws in a fresh study.
W0_SEED = (0 + 1000 * zlib.crc32(b"w0/0")) % 2**32
VARIANTS = ("peer", "sweeper-1", "sweeper-2")


def peer(args: argparse.Namespace) -> None:
    """(peer): the hand-written sweep; run in its own process, in a fresh directory (cwd)."""
    import mlflow
    import numpy as np
    import optuna
    import torch
    from optuna_integration import MLflowCallback
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, Subset
    from torchvision import transforms

    from sweeper.training.data import load_images
    from sweeper.training.models import build_model

    warnings.filterwarnings("ignore", category=FutureWarning)  # MLflowCallback: deprecated in 4.9
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)

    class CIFAR10Arrays(Dataset):
        """torchvision.datasets.CIFAR10 after its unpickling: HWC uint8 `data`, `targets`."""

        def __init__(self, data: np.ndarray, targets: list[int], transform) -> None:
            self.data, self.targets, self.transform = data, targets, transform

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, index: int):
            img, target = self.data[index], self.targets[index]
            return self.transform(Image.fromarray(img)), target  # as CIFAR10.__getitem__

    images = load_images("cifar10", args.data_dir)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    full = CIFAR10Arrays(images.train_x.transpose(0, 2, 3, 1), images.train_y.tolist(), transform)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(full))  # sweeper's split: the
    val_idx, train_idx = order[:VAL_SIZE], order[VAL_SIZE:][: args.train_size]  # same images
    train_set, val_set = Subset(full, np.sort(train_idx)), Subset(full, np.sort(val_idx))
    workers = args.loader_workers
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH, num_workers=workers,
                            persistent_workers=workers > 0)  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()
    tracking = MLflowCallback(tracking_uri=f"sqlite:///{Path.cwd() / 'mlflow.db'}",
                              metric_name="val_acc")  # fmt: skip
    epochs_run = 0

    @tracking.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_run
        optimizer_name = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        low, high = (0.01, 0.2) if optimizer_name == "sgd" else (3e-4, 3e-3)
        batch_norm = trial.suggest_categorical("batch_norm", [True, False])
        activation = trial.suggest_categorical("activation", ["relu", "elu"])
        lr = trial.suggest_float("lr", low, high, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True)
        batch_size = trial.suggest_categorical("batch_size", [64, 128])

        torch.manual_seed(0)
        model = build_model({"model": "cnn2", "batch_norm": batch_norm, "activation": activation})
        if optimizer_name == "sgd":
            optimizer = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
            )
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                  num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=len(train_loader)
        )
        best_acc, best_state = -1.0, None
        for epoch in range(1, args.epochs + 1):
            started = time.perf_counter()
            model.train()
            train_loss = correct = seen = 0
            for x, y in train_loader:
                optimizer.zero_grad()
                logits = model(x)
                loss = loss_fn(logits, y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                train_loss += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            model.eval()
            val_loss = val_correct = 0
            with torch.no_grad():
                for x, y in val_loader:
                    logits = model(x)
                    val_loss += loss_fn(logits, y).item() * len(y)
                    val_correct += (logits.argmax(1) == y).sum().item()
            val_acc = val_correct / len(val_set)
            epochs_run += 1
            mlflow.log_metrics({"train_loss": train_loss / seen, "train_acc": correct / seen,
                                "val_loss": val_loss / len(val_set), "val_acc": val_acc,
                                "seconds": time.perf_counter() - started}, step=epoch)  # fmt: skip
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            trial.report(val_acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        torch.save(best_state, "best.pt")
        mlflow.log_artifact("best.pt")
        return best_acc

    study = optuna.create_study(
        study_name="peer",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(objective, n_trials=args.trials, callbacks=[tracking])
    print(json.dumps(summary(study.trials, epochs_run)))


def summary(trials: list, epochs_run: int) -> dict:
    """What a sweep did: trials by state, epochs trained, the best validation accuracy."""
    states = [t.state.name for t in trials]
    values = [t.value for t in trials if t.state.name == "COMPLETE"]
    return {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"), "epochs": epochs_run,
            "best": max(values) if values else None}  # fmt: skip


def timed(command: list[str], cwd: str) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the process and every descendant it reaped:
    sweeper's workers, DataLoader workers) and stdout of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done.stdout


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One whole process of a variant in a fresh directory: wall and CPU seconds, what it did."""
    work = tempfile.mkdtemp(prefix=f"peer-bench-{variant}-")
    try:
        if variant == "peer":
            command = [sys.executable, str(Path(__file__).resolve()), "--peer", *common(args),
                       "--threads", str(args.threads), "--loader-workers", str(args.loader_workers),
                       "--sampler-seed", str(args.sampler_seed)]  # fmt: skip
            wall, cpu, out = timed(command, work)
            return {"wall": wall, "cpu": cpu, **json.loads(out.strip().splitlines()[-1])}
        workers = variant.split("-")[1]
        command = [SWEEPER, "launch", str(STUDY), "--dir", work, "--workers", workers,
                   "--no-ensemble", "--no-progress", *common(args)]  # fmt: skip
        wall, cpu, _ = timed(command, work)
        return {"wall": wall, "cpu": cpu, **stored_summary(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stored_summary(sweep_dir: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{sweep_dir}/optuna.db")
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    return summary(trials, sum(t.user_attrs.get("epochs_run", 0) for t in trials))


def common(args: argparse.Namespace) -> list[str]:
    return ["--trials", str(args.trials), "--epochs", str(args.epochs),
            "--train-size", str(args.train_size), "--data-dir", args.data_dir]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three variants")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--loader-workers", type=int, default=2, help="the peer's DataLoaders")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the peer's torch")
    parser.add_argument("--sampler-seed", type=int, default=W0_SEED, help="the peer's TPE seed")
    parser.add_argument("--skip-2", action="store_true", help="leave out sweeper --workers 2")
    parser.add_argument("--markdown", help="also write the results table to this file")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)  # runs (peer)
    args = parser.parse_args()
    if args.peer:
        peer(args)
        return
    from sweeper.training.data import load_images

    load_images("cifar10", args.data_dir)  # decode into the cache before any timing
    variants = [v for v in VARIANTS if not (args.skip_2 and v == "sweeper-2")]
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(args.repeats):  # rotating order: a slow spell of a shared machine hits all
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        for variant in order:
            runs[variant].append(run_variant(variant, args))
        line = "  ".join(f"{v} {runs[v][-1]['wall']:.1f} s (cpu {runs[v][-1]['cpu']:.0f} s, "
                         f"{runs[v][-1]['epochs']} epochs)" for v in variants)  # fmt: skip
        ratio = runs["sweeper-1"][-1]["wall"] / runs["peer"][-1]["wall"]
        print(f"round {i + 1} ({' '.join(order)}): {line}  sweeper-1/peer {ratio:.3f}", flush=True)
    text = report(args, runs, load_before, os.getloadavg()[0])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


NAMES = {
    "peer": "peer: Optuna + MLflowCallback + DataLoader/PIL, 1 process",
    "sweeper-1": "`sweeper launch --workers 1`",
    "sweeper-2": "`sweeper launch --workers 2`",
}


def report(args: argparse.Namespace, runs: dict[str, list[dict]], load_before: float,
           load_after: float) -> str:  # fmt: skip
    """The table: medians, ratios to the peer (of medians, and the median of per-round ones)."""

    median = statistics.median
    peer_runs = runs["peer"]
    rows = []
    for variant, own in runs.items():
        wall, cpu = median(r["wall"] for r in own), median(r["cpu"] for r in own)
        paired = median(r["wall"] / p["wall"] for r, p in zip(own, peer_runs, strict=True))
        paired_cpu = median(r["cpu"] / p["cpu"] for r, p in zip(own, peer_runs, strict=True))
        rounds = ", ".join(f"{r['wall']:.1f}" for r in own)
        epochs = ", ".join(str(r["epochs"]) for r in own)
        best = median(r["best"] or 0.0 for r in own)
        rows.append(
            f"| {NAMES[variant]} | {wall:.1f} s | {rounds} | {paired:.3f}x | {cpu:.1f} s | "
            f"{paired_cpu:.3f}x | {epochs} | {100 * best:.1f}% |"
        )
    ratio = median(r["wall"] / p["wall"] for r, p in zip(runs["sweeper-1"], peer_runs, strict=True))
    verdict = "met" if ratio <= 0.40 else "not met"
    return "\n".join([
        f"{time.strftime('%Y-%m-%d')}, {machine()}; 1-minute load "
        f"average {load_before:.2f} before, {load_after:.2f} after.",
        "",
        f"{args.trials} trials x {args.epochs} epochs x {args.train_size} training images "
        f"(cnn2, studies/quickstart.py's space, {VAL_SIZE} validation images); whole processes, "
        f"{args.repeats} round(s) in rotating order; ratios are per round, then the median.",
        "",
        "| variant | median wall | wall per round | wall / peer | median CPU | CPU / peer "
        "| epochs trained | best val acc (median) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Target (issue 14): sweeper with 1 worker at most 0.40x of the peer's wall time: "
        f"{ratio:.3f}x, **{verdict}**. CPU: user + system seconds of the process and all its "
        "children (sweeper's workers, DataLoader workers).",
        f"Peer: {args.loader_workers} DataLoader workers, {args.threads} torch threads, fp32, "
        f"TPE seed {args.sampler_seed} (sweeper's worker w0: the same 6 configurations as "
        "`--workers 1`).",
        "",
        f"Command: `.venv/bin/python bench/peer.py --repeats {args.repeats}`",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
