"""The one training loop: a trial, an ensemble member and `sweeper train` all run this.

It knows nothing of Optuna or MLflow: they hang on the per-epoch callback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sweeper.errors import SweeperError
from sweeper.interrupt import STOPPING
from sweeper.training.batches import DeviceSplit, PaceCallback, PaceMeter
from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData
from sweeper.training.models import build_model

# Called after every epoch with that epoch's metrics and the full training state
# (to checkpoint); returning True stops training.
EpochCallback = Callable[[dict[str, float], "TrainState"], bool | None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SweeperError(
                f"device: '{name}' was asked for but no CUDA GPU is visible; use cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise SweeperError(f"device: '{name}' does not exist; {count} GPU(s) are visible")
    return device


def resolved(config: TrainConfig) -> TrainConfig:
    """The config as it runs here: bf16 and channels_last decided where they were left to auto
    (None). bf16 autocast pays only with native bf16 (CUDA, or CPU instructions for it); the
    channels_last layout runs convolutions faster on CUDA and on the CPU (bench/pipeline.py)."""
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    bf16 = config.bf16 if config.bf16 is not None else cuda or cpu_has_native_bf16()
    channels_last = True if config.channels_last is None else config.channels_last
    eval_batch = config.eval_batch_size or eval_batch_size(device)
    return replace(config, bf16=bf16, channels_last=channels_last, eval_batch_size=eval_batch)


def eval_batch_size(device: torch.device) -> int:
    """Images per forward pass when only predicting. A CPU predicts fastest on batches whose
    activations stay in its caches: 256 ran 1.3-1.6x the images/s of 1024 for cnn2 on a 2-core
    EPYC (fp32, channels_last); a GPU wants large batches."""
    return 1024 if device.type == "cuda" else 256


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: emulated bf16 would be slower than fp32
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or ("bf16" in flags and "Features" in text)


@dataclass
class TrainState:
    """Everything needed to go on from the end of an epoch, exactly."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    epoch: int = 0  # epochs finished
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None  # the monitored metric, higher is better
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint that loads with torch.load(weights_only=True)."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_weights": self.best_weights,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.best_epoch = state["best_epoch"]
        self.best_score = state["best_score"]
        self.best_weights = state["best_weights"]
        self.bad_epochs = state["bad_epochs"]


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | stopped (by the callback) | diverged
    history: list[dict[str, float]]
    best_epoch: int | None
    best_val_acc: float | None
    seconds: float
    model: nn.Module  # with the best epoch's weights
    device: torch.device
    mean: np.ndarray
    std: np.ndarray
    val_predictions: torch.Tensor | None = None  # of the best epoch; None if before a resume


def train(
    config: TrainConfig,
    data: SplitData,
    callback: EpochCallback | None = None,
    resume: dict[str, Any] | None = None,
    pace: PaceCallback | None = None,
) -> TrainResult:
    """Train one config; early stopping restores the best epoch's weights."""
    started = time.perf_counter()
    config = resolved(config)
    device = resolve_device(config.device)
    state, train_split, val_split = prepare(config, data, device)
    if resume is not None:
        state.load_state_dict(resume)
    model = state.model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    meter = (
        PaceMeter(pace, len(train_split), len(val_split), device, config.epochs) if pace else None
    )
    status = "completed"
    best_predictions = None

    while state.epoch < config.epochs:
        epoch_started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        batches = train_split.batches(config.batch_size, state.generator, augment=config.augment)
        trained = train_epoch(state, batches, loss_fn, autocast, config.grad_clip, meter)
        if trained is None:
            status = "diverged"
            break
        train_seconds = time.perf_counter() - epoch_started
        val_logits = predict(model, val_split, config.eval_batch_size, autocast)
        val_loss, val_acc = scores(val_logits, val_split.y)
        state.epoch += 1
        metrics = {"epoch": state.epoch, "train_loss": trained[0], "train_acc": trained[1],
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                   "seconds": time.perf_counter() - epoch_started,
                   "images_per_s": len(train_split) / train_seconds}  # fmt: skip
        state.history.append(metrics)
        if meter is not None:
            meter.epoch(metrics)
        if not math.isfinite(val_loss):
            status = "diverged"
            break
        if keep_if_best(state, config):
            best_predictions = val_logits.argmax(1)
        if callback is not None and callback(metrics, state):
            status = "stopped"
            break
        if config.patience is not None and state.bad_epochs >= config.patience:
            status = "early_stopped"
            break

    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    best_val_acc = state.history[state.best_epoch - 1]["val_acc"] if state.best_epoch else None
    return TrainResult(status, state.history, state.best_epoch, best_val_acc,
                       time.perf_counter() - started, model, device, *data.mean_std,
                       val_predictions=best_predictions if state.best_epoch else None)  # fmt: skip


def keep_if_best(state: TrainState, config: TrainConfig) -> bool:
    """Keep the last epoch's weights if its monitored metric is the best yet; count the epochs
    without progress otherwise."""
    sign = 1.0 if config.monitor == "val_acc" else -1.0
    score = sign * state.history[-1][config.monitor]
    if state.best_score is None or score > state.best_score:
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
        state.best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        return True
    state.bad_epochs += 1
    return False


def prepare(
    config: TrainConfig, data: SplitData, device: torch.device
) -> tuple[TrainState, DeviceSplit, DeviceSplit]:
    """The seeded model, optimizer, schedule and batch generator of a run, and its train and
    validation splits resident on the device."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = config.channels_last
    model = build_model(
        config.model_options(),
        num_classes=len(data.classes),
        in_channels=data.in_channels,
        image_size=data.image_size,
    )
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    mean, std = data.mean_std
    train_split = DeviceSplit(data.train_x, data.train_y, mean, std, device, channels_last)
    val_split = DeviceSplit(data.val_x, data.val_y, mean, std, device, channels_last)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return TrainState(model, optimizer, scheduler, generator), train_split, val_split


def train_epoch(
    state: TrainState,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    autocast: torch.autocast,
    grad_clip: float | None,
    meter: PaceMeter | None = None,
) -> tuple[float, float] | None:
    """One pass over the batches: mean loss and accuracy, or None once the loss is not finite."""
    model, optimizer = state.model, state.optimizer
    model.train()
    keep_frozen_norms_in_eval(model)
    device = next(model.parameters()).device
    check_every = 20 if device.type == "cuda" else 1  # a finiteness check syncs the GPU
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(batches):
        if STOPPING.is_set():  # the interrupt was raised where Python could not pass it on
            raise KeyboardInterrupt
        with autocast:
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        state.scheduler.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if meter is not None:
            meter.batch(len(y))
        if step % check_every == 0 and not torch.isfinite(loss_sum):
            return None
    if not torch.isfinite(loss_sum):
        return None
    return loss_sum.item() / seen, correct.item() / seen


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Normalization layers with running statistics (BatchNorm, InstanceNorm, a user's layer
    that follows them) whose parameters are all frozen stay in eval mode, so that their
    statistics stay as fixed as their weights (freeze_features, any frozen backbone). One
    without parameters (affine=False) trains as the model does: nothing says it is frozen."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        tracks = getattr(module, "track_running_stats", False)
        if tracks and params and not any(p.requires_grad for p in params):
            module.eval()


@torch.no_grad()
def predict(
    model: nn.Module, split: DeviceSplit, batch_size: int, autocast: torch.autocast | None = None
) -> torch.Tensor:
    """Logits (float32) of a whole split, in order."""
    model.eval()
    outputs = []
    for x, _ in split.batches(batch_size):
        with autocast or contextlib.nullcontext():
            outputs.append(model(x).float())
    return torch.cat(outputs)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (0..1) of logits against labels."""
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def predict_arrays(
    result: TrainResult, x: np.ndarray, batch_size: int | None = None
) -> torch.Tensor:
    """Logits of the trained model for uint8 images [N, C, H, W]."""
    labels = np.zeros(len(x), dtype=np.int64)
    split = DeviceSplit(x, labels, result.mean, result.std, result.device)
    return predict(result.model, split, batch_size or eval_batch_size(result.device))


def evaluate_test(result: TrainResult, data: SplitData, config: TrainConfig) -> float:
    """Accuracy of the trained model on the test split (never used while searching)."""
    logits = predict_arrays(result, data.test_x, config.eval_batch_size)
    return (logits.argmax(1).cpu().numpy() == data.test_y).mean().item()


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, nesterov=nesterov, weight_decay=wd
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr multiplier at each optimizer step: linear warmup, then the schedule."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    milestones = [round(m * total) for m in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if config.schedule == "step":
            return config.gamma ** sum(step >= m for m in milestones)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.schedule == "onecycle":  # linear up for 30%, then linear down to 0
            peak = 0.3
            if progress < peak:
                return 0.04 + 0.96 * progress / peak
            return max(0.0, (1 - progress) / (1 - peak))
        return 1.0

    return factor
