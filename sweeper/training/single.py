"""`sweeper train`: one config trained to its end, a bar per epoch, its accuracies printed."""

from __future__ import annotations

import json
from typing import Any

from tqdm import tqdm

from sweeper.training.config import TrainConfig
from sweeper.training.data import split_of
from sweeper.training.loop import evaluate_test, resolved, train


def train_one(config: TrainConfig, as_json: bool = False) -> int:
    """Train `config`; print its validation and test accuracy (one JSON line if as_json). The
    exit code: 1 if it diverged."""
    config = resolved(config)  # what this run uses, auto settings decided
    data = split_of(config)
    bar = tqdm(total=config.epochs, desc=config.model, unit="epoch", disable=as_json, leave=True)

    def show(metrics: dict[str, float], _state: Any) -> bool:
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['val_acc']:.4f}",
                        img_s=f"{metrics['images_per_s']:.0f}")  # fmt: skip
        return False

    result = train(config, data, callback=show)
    bar.close()
    test_acc = evaluate_test(result, data, config) if result.best_epoch else None
    if as_json:
        keys = ("status", "history", "best_epoch", "best_val_acc", "seconds")
        report = {"config": config.to_dict(), **{k: getattr(result, k) for k in keys}}
        print(json.dumps({**report, "test_acc": test_acc, "split_hash": data.split_hash}))
    else:
        print(f"status: {result.status} after {result.seconds:.1f} s")
        if result.best_epoch:
            print(f"validation accuracy: {result.best_val_acc:.4f} (best epoch"
                  f" {result.best_epoch})\ntest accuracy: {test_acc:.4f}")  # fmt: skip
    return 0 if result.status != "diverged" else 1
