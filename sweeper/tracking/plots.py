"""The figure of a trial run: its validation confusion matrix, drawn without pyplot (no global
backend, nothing to close). Learning curves need no picture: MLflow's run charts and the report
draw them from the per-epoch metrics."""

from __future__ import annotations

from typing import Any

import numpy as np


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
