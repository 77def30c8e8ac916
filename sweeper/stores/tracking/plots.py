"""The figure of a trial run: its validation confusion matrix, drawn without pyplot (no global
backend, nothing to close). A worker logs the counts; the launcher draws them (tracking.figures).
Learning curves need no picture: MLflow's run charts and the report draw them from the per-epoch
metrics."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_counts(labels: Any, predictions: Any, n: int) -> np.ndarray:
    """Counts [n, n] of true class (rows) against predicted class (columns)."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    return np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)


def confusion_matrix(counts: Any, classes: list[str]) -> Any:
    """The counts as a Figure, one labelled cell each up to 20 classes."""
    from matplotlib.figure import Figure  # only a launcher draws, once its workers run

    counts, n = np.asarray(counts, np.int64), len(classes)
    size = max(4.0, 0.5 * n + 2)
    figure = Figure(figsize=(size + 1, size))
    # fixed margins, room for the longest class name: a tight layout would draw the figure twice
    margin = min(0.35, 0.12 + 0.012 * max(len(name) for name in classes))
    ax = figure.add_axes((margin, margin, 0.86 - margin, 0.88 - margin))
    figure.colorbar(ax.imshow(counts, cmap="Blues"), ax=ax, fraction=0.05)
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), classes)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"validation: {counts.sum()} images, accuracy {accuracy:.4f}")
    for (row, col), count in np.ndenumerate(counts) if n <= 20 else ():
        color = "white" if count > counts.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    return figure
