"""The figures of a trial run: learning curve and confusion matrix (matplotlib, no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def learning_curve(history: list[dict[str, float]]) -> Any:
    """Train/val loss and accuracy per epoch, in two panels (a matplotlib Figure)."""
    figure, (loss_ax, acc_ax) = _figure(ncols=2, figsize=(10, 4))
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}", float("nan")) for row in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    classes: list[str] | None = None,
) -> Any:
    """Counts of true class (rows) against predicted class (columns), as a Figure."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    n = len(classes) if classes else int(max(labels.max(), predictions.max())) + 1
    names = classes or [str(i) for i in range(n)]
    counts = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    size = max(4.0, 0.5 * n + 2)
    figure, ax = _figure(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax)
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float(np.trace(counts)) / max(int(counts.sum()), 1)
    ax.set_title(f"validation: {counts.sum()} images, accuracy {accuracy:.4f}")
    if n <= 20:
        middle = counts.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if count > middle else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    figure.tight_layout()
    return figure


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """A figure drawn by the Agg canvas, outside pyplot (no global backend, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    axes = figure.subplots(ncols=ncols)
    return figure, axes
