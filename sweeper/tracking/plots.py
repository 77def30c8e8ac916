"""The figures of a trial run: its learning curve and its validation confusion matrix, drawn
without pyplot (no global backend, nothing to close)."""

from __future__ import annotations

from typing import Any

import numpy as np


def learning_curve(history: list[dict[str, float]]) -> Any:
    """Train/val loss and accuracy per epoch, in two panels (a matplotlib Figure)."""
    from matplotlib.figure import Figure  # only workers draw: a launcher never loads it

    figure = Figure(figsize=(10, 4), layout="tight")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, metric in zip(figure.subplots(ncols=2), ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}", float("nan")) for row in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return figure


def confusion_matrix(labels: Any, predictions: Any, classes: list[str] | None = None) -> Any:
    """Counts of true class (rows) against predicted class (columns), as a Figure."""
    from matplotlib.figure import Figure  # only workers draw: a launcher never loads it

    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    n = len(classes) if classes else int(max(labels.max(), predictions.max())) + 1
    counts = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    size = max(4.0, 0.5 * n + 2)
    figure = Figure(figsize=(size + 1, size), layout="tight")
    ax = figure.subplots()
    figure.colorbar(ax.imshow(counts, cmap="Blues"), ax=ax)
    names = classes or [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), names)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"validation: {counts.sum()} images, accuracy {accuracy:.4f}")
    for (row, col), count in np.ndenumerate(counts) if n <= 20 else ():
        color = "white" if count > counts.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    return figure
