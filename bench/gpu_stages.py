"""The stages of bench/gpu.py, each run in its own process (`gpu.py --stage NAME`): they append
their result rows, one JSON object a line, to the file the driver names."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SWEEPER = [sys.executable, "-m", "sweeper.cli"]  # works installed or not (PYTHONPATH)
KILL_GRACE_S = 15  # from SIGTERM to SIGKILL of a command that ran out of time
DEVICE = "cuda"  # where the in-process measurements run (a smoke run of this code sets "cpu")

# throughput: batch 512, 50 steps an epoch; epoch 1 is the warm-up (cuDNN autotuning), 2-5 timed
BATCH, STEPS_PER_EPOCH, TIMED_EPOCHS, VAL_SIZE = 512, 50, 4, 1000
MODELS = ("cnn2", "resnet20", "resnet56", "vgg16", "resnet9")
LOADER_MODELS = ("cnn2", "resnet9")  # also through a DataLoader
LOADER_WORKERS, LOADER_WARMUP, LOADER_STEPS = 8, 3, 45
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 5e-4  # throughput does not depend on them

# trials per hour: studies/cnn.py scaled down, the same for every K
TRIALS_PER_GPU = (1, 2, 4, 8)
TRIALS, TRIAL_EPOCHS, TRIAL_TRAIN_SIZE, TRIAL_LAUNCH_TIMEOUT_S = 8, 2, 10000, 60

SWEEP_STUDY = "studies/resnet9_fast.py"
SWEEP_WORKERS = 4  # trials packed on the one GPU, in the sweep and in its ensemble

# what the stages and tests_gpu import (a bare GPU image lacks some: bench/gpu_prepare.sh)
NEEDED_MODULES = ("optuna", "mlflow", "mlflow.pytorch", "sqlalchemy", "torchvision", "pytest")
NEEDED_MODULES += (
    "sweeper.cli",
    "sweeper.worker.loop",
    "sweeper.ensemble.finish",
    "sweeper.sweep.launch",
)

Emit = Callable[[dict[str, Any]], None]


def stage_preflight(args: argparse.Namespace, emit: Emit) -> None:
    """Versions, the imports sweeper needs, and CIFAR-10 in the decode cache."""
    import importlib

    import torch

    missing = []
    for module in NEEDED_MODULES:
        try:
            importlib.import_module(module)
        except Exception as error:  # an ImportError, or a broken dependency inside one
            missing.append(f"{module} ({type(error).__name__}: {error})")
    info: dict[str, Any] = {
        "table": "machine",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count(),
        "cpus": os.cpu_count(),
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "missing": missing,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["device"] = properties.name
        info["memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["capability"] = f"{properties.major}.{properties.minor}"
    emit(info)
    print(json.dumps(info, indent=1))
    if not torch.cuda.is_available():
        raise SystemExit("preflight: torch sees no CUDA device")
    if missing:
        raise SystemExit(
            "preflight: cannot import " + "; ".join(missing) + ". On a bare GPU machine, carry"
            " the missing packages as wheels: see bench/gpu_prepare.sh"
        )
    from sweeper.training.data import load_images

    started = time.perf_counter()
    images = load_images("cifar10", args.data_dir)
    print(f"CIFAR-10 ready in {time.perf_counter() - started:.1f} s: {images.train_x.shape}")


def stage_throughput(args: argparse.Namespace, emit: Emit) -> None:
    """sweeper's train() fp32 vs bf16 + channels_last; DeviceSplit vs a DataLoader."""
    import torch

    from sweeper.training.config import TrainConfig
    from sweeper.training.data import load_images, split
    from sweeper.training.loop import train

    images = load_images("cifar10", args.data_dir)
    data = split(images, VAL_SIZE, BATCH * STEPS_PER_EPOCH, seed=0)
    for model in MODELS:
        for mode, fast in (("fp32", False), ("bf16_cl", True)):
            config = TrainConfig(model=model, batch_size=BATCH, epochs=1 + TIMED_EPOCHS,
                                 optimizer="sgd", lr=LR, momentum=MOMENTUM, nesterov=True,
                                 weight_decay=WEIGHT_DECAY, device=DEVICE, bf16=fast,
                                 channels_last=fast, seed=0)  # fmt: skip
            cuda = DEVICE.startswith("cuda")
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            result = train(config, data)
            rates = [epoch["images_per_s"] for epoch in result.history[1:]]
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            row = {"table": "throughput", "model": model, "mode": mode, "peak_gib": peak,
                   "steps": STEPS_PER_EPOCH * len(rates), "status": result.status}  # fmt: skip
            emit({**row, "images_per_s": statistics.median(rates) if rates else None})
            del result
            if cuda:
                torch.cuda.empty_cache()
        if model in LOADER_MODELS:
            try:
                rate = loader_images_per_s(model, data)
                emit({"table": "throughput", "model": model, "mode": "dataloader",
                      "steps": LOADER_STEPS, "images_per_s": rate})  # fmt: skip
            except Exception as error:  # recorded; the other measurements go on
                emit({"table": "throughput", "model": model, "mode": "dataloader",
                      "error": f"{type(error).__name__}: {error}"})  # fmt: skip


def loader_images_per_s(model_name: str, data: Any) -> float:
    """bench/pipeline.py's (a) on the GPU: PIL images, torchvision transforms, a DataLoader with
    pinned memory, bf16 autocast and channels_last like sweeper's fast path. The clock starts
    before iter(loader) (worker start-up included, as a real epoch pays it) and stops after a
    CUDA synchronize."""
    import torch
    from pipeline import PilDataset  # bench/ is this file's folder
    from torch import nn
    from torchvision import transforms

    from sweeper.training.models import build_model

    mean, std = data.mean_std
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean.tolist(), std.tolist()),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        PilDataset(data.train_x, data.train_y, transform), batch_size=BATCH, shuffle=True,
        num_workers=LOADER_WORKERS, pin_memory=True, drop_last=True,
    )  # fmt: skip
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as sweeper's prepare() sets it
    model = build_model({"model": model_name}).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()

    def run(limit: int) -> int:
        model.train()
        seen = 0
        for step, (x, y) in enumerate(loader):
            if step == limit:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen

    run(LOADER_WARMUP)  # its own iterator: its workers are gone before the timed one starts
    started = time.perf_counter()
    seen = run(LOADER_STEPS)
    return seen / (time.perf_counter() - started)


def stage_trials(args: argparse.Namespace, emit: Emit) -> None:
    """Trials per hour of studies/cnn.py with K trials packed on the GPU, K = 1, 2, 4, 8."""
    for k in TRIALS_PER_GPU:
        sweep_dir = Path(args.workdir) / f"trials-{k}"
        command = [*SWEEPER, "launch", "studies/cnn.py", "--dir", str(sweep_dir),
                   "--data-dir", args.data_dir, "--trials", str(TRIALS),
                   "--epochs", str(TRIAL_EPOCHS), "--train-size", str(TRIAL_TRAIN_SIZE),
                   "--trials-per-gpu", str(k), "--workers", str(k), "--no-ensemble",
                   "--no-progress"]  # fmt: skip
        timeout = min(TRIAL_LAUNCH_TIMEOUT_S, args.stage_deadline - time.time())
        row = {"table": "trials", "trials_per_gpu": k}
        if timeout < 10:
            emit({**row, "wall_s": 0.0, "exit": None, "error": "not run: no time left"})
            continue
        code, wall = run_command(command, timeout)
        row.update(wall_s=wall, exit=code)
        emit({**row, **trial_counts(sweep_dir, "cnn")})


def trial_counts(sweep_dir: Path, name: str) -> dict[str, Any]:
    """How many trials of a study finished, and the span from the first start to the last end."""
    import optuna

    from sweeper.stores.storage import make_storage

    try:
        storage = make_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception as error:  # no study: the launch failed early; its log says why
        return {"error": f"{type(error).__name__}: {error}"}
    states = [t.state.name for t in trials]
    ended = [t for t in trials if t.datetime_complete and t.state.name in ("COMPLETE", "PRUNED")]
    span = None
    if ended:
        first = min(t.datetime_start for t in ended)
        span = (max(t.datetime_complete for t in ended) - first).total_seconds()
    counts = {state.lower(): states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")}
    return {**counts, "finished": len(ended), "span_s": span}


def stage_sweep(args: argparse.Namespace, emit: Emit) -> None:
    """A short sweep of studies/resnet9_fast.py, its best trial on the test split, its ensemble."""
    from sweeper.spec.study import load_study

    name = load_study(ROOT / SWEEP_STUDY).name
    sweep_dir = Path(args.workdir) / "sweep"
    pool = ["--trials-per-gpu", str(SWEEP_WORKERS), "--workers", str(SWEEP_WORKERS)]
    timeout = args.sweep_timeout
    command = [*SWEEPER, "launch", SWEEP_STUDY, "--dir", str(sweep_dir), "--data-dir",
               args.data_dir, "--timeout", f"{timeout:.0f}", *pool, "--no-ensemble",
               "--no-progress"]  # fmt: skip
    # trials in flight at the timeout finish; one that runs far over is stopped (it keeps its
    # checkpoint) so that the ensemble still gets its time
    code, wall = run_command(command, min(args.stage_deadline - time.time(), timeout + 90))
    emit({"table": "sweep", "item": "sweep", "timeout_s": timeout, "wall_s": wall, "exit": code,
          "trials_per_gpu": SWEEP_WORKERS, **trial_counts(sweep_dir, name)})  # fmt: skip
    emit({"table": "sweep", "item": "best_trial", **best_trial_on_test(sweep_dir, name)})
    command = [*SWEEPER, "ensemble", SWEEP_STUDY, "--dir", str(sweep_dir), "--data-dir",
               args.data_dir, *pool, "--no-progress"]  # fmt: skip
    code, wall = run_command(command, args.stage_deadline - time.time())
    emit({"table": "sweep", "item": "ensemble", "wall_s": wall, "exit": code,
          **ensemble_figures(sweep_dir, name)})  # fmt: skip


def best_trial_on_test(sweep_dir: Path, name: str) -> dict[str, Any]:
    """The test accuracy of the best trial by the study's metric, from its best checkpoint."""
    import optuna

    from sweeper.ensemble.evaluate import accuracy, load_member, probabilities
    from sweeper.stores.paths import default_tracking_uri
    from sweeper.stores.storage import make_storage
    from sweeper.stores.tracking import fetch_checkpoint
    from sweeper.training.config import TrainConfig
    from sweeper.training.data import split_of

    storage = make_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    best = optuna.load_study(study_name=name, storage=storage).best_trial
    data = split_of(TrainConfig.from_dict(best.user_attrs["config"]))
    uri, ref = default_tracking_uri(sweep_dir), best.user_attrs["checkpoint"]
    model, saved = load_member(fetch_checkpoint(uri, ref, sweep_dir / "downloads"))
    probs = probabilities(model, saved["mean"], saved["std"], data.test_x, device=DEVICE)
    return {"trial": best.number, "val_acc": best.value, "test_acc": accuracy(probs, data.test_y),
            "params": best.params, "epochs": best.user_attrs.get("epochs_run")}  # fmt: skip


def ensemble_figures(sweep_dir: Path, name: str) -> dict[str, Any]:
    """The latest ensemble run's test figures, from the sweep's MLflow store."""
    from sweeper.stores.paths import default_tracking_uri
    from sweeper.stores.tracking.queries import latest_run

    run = latest_run(default_tracking_uri(sweep_dir), name, "ensemble")
    if run is None:
        return {}
    keys = ("ensemble_test_acc", "best_member_test_acc", "gain_over_best_member", "members")
    return {key: run.get(f"metrics.{key}") for key in keys}


def run_command(command: list[str], timeout: float) -> tuple[int | None, float]:
    """Run a command of this stage (output into the stage's log); on timeout, SIGTERM (a
    launcher then stops its workers), then SIGKILL. Returns the exit code (None: timed out) and
    the wall time."""
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        return process.wait(timeout=max(1.0, timeout)), time.perf_counter() - started
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"timed out after {timeout:.0f} s: {shlex.join(command[3:5])}", flush=True)
        return None, time.perf_counter() - started


STAGE_FUNCTIONS = {"preflight": stage_preflight, "throughput": stage_throughput,
                   "trials": stage_trials, "sweep": stage_sweep}  # fmt: skip


def run_stage_here(args: argparse.Namespace) -> int:
    """Inside a stage's process: run it, each result row appended to --result as a JSON line.
    (bench/ is on sys.path, as the script's folder: bench/pipeline.py imports from there.)"""

    def emit(row: dict[str, Any]) -> None:
        with open(args.result, "a") as file:
            file.write(json.dumps(row, default=str) + "\n")

    STAGE_FUNCTIONS[args.stage](args, emit)
    return 0
