"""Ensembles of trained members: average their softmax probabilities, pick members greedily.

Plain math on best checkpoints (records.BestWeights); no Optuna, no MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from sweeper.errors import SweeperError, first_line
from sweeper.records import BestWeights
from sweeper.training.batches import DeviceSplit
from sweeper.training.config import TrainConfig
from sweeper.training.loop import eval_batch_size, predict
from sweeper.training.models import build_model


class Ensemble(nn.Module):
    """Averages its members' softmax probabilities.

    Normalization is inside, so it takes raw images scaled 0..1 (float [B, C, H, W]) and returns
    probabilities [B, num_classes] that sum to 1. `weights` says how many times each member
    counts (greedy selection with replacement); members with weight 0 are dropped. `options`
    are the members' build_model options, kept to save the ensemble as plain data
    (sweeper.ensemble.files).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        means: Sequence[Tensor],
        stds: Sequence[Tensor],
        classes: list[str],
        weights: Sequence[float] | None = None,
        image_size: int = 32,
        options: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if not members or not len(members) == len(means) == len(stds) == len(weights):
            raise SweeperError(
                f"ensemble: needs at least one member and one mean, std and weight per member; "
                f"got {len(members)} members, {len(means)} means, {len(stds)} stds, "
                f"{len(weights)} weights"
            )
        if min(weights) < 0 or sum(weights) <= 0:
            raise SweeperError(f"ensemble: weights {weights} must be >= 0 with a positive sum")
        keep = [i for i, w in enumerate(weights) if w > 0]
        total = sum(weights)
        self.members = nn.ModuleList([members[i] for i in keep])
        for name, values in (("means", means), ("stds", stds)):
            per_channel = [torch.as_tensor(values[i]).float().view(1, -1, 1, 1) for i in keep]
            self.register_buffer(name, torch.stack(per_channel))
        self.register_buffer("weights", torch.tensor([weights[i] / total for i in keep]))
        self.classes: list[str] = list(classes)
        self.options = None if options is None else [dict(options[i]) for i in keep]
        self.input_shape: tuple[int, int] = (int(self.means.shape[2]), image_size)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities [B, num_classes] for images in 0..1 [B, C, H, W]."""
        probs: list[Tensor] = []
        for i, member in enumerate(self.members):
            logits = member((x - self.means[i]) / self.stds[i])
            probs.append(torch.softmax(logits, dim=1) * self.weights[i])
        return torch.stack(probs).sum(0)


def load_member(checkpoint: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a best checkpoint, in eval mode on the CPU, and the checkpoint dict."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SweeperError(f"ensemble: checkpoint {path} does not exist; check the member path")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: all the same to the user
        raise SweeperError(f"ensemble: cannot read checkpoint {path} ({first_line(exc)})") from None
    missing = BestWeights.missing(saved)
    if missing:
        raise SweeperError(
            f"ensemble: {path} lacks {', '.join(missing)}; "
            "use a best checkpoint written by sweeper (trial-N-best.pt)"
        )
    model = build_model(
        member_options(saved, str(path)),
        num_classes=len(saved["classes"]),
        in_channels=int(saved["in_channels"]),
        image_size=int(saved["image_size"]),
    )
    model.load_state_dict(saved["model"])
    return model.eval(), saved


def one_model(checkpoint: Path | str) -> Ensemble:
    """A trial's own model (its best checkpoint) as an ensemble of one: the same normalization
    inside, the same exports."""
    model, saved = load_member(checkpoint)
    return Ensemble([model], [saved["mean"]], [saved["std"]], list(saved["classes"]),
                    image_size=int(saved["image_size"]),
                    options=[member_options(saved, str(checkpoint))])  # fmt: skip


def member_options(saved: dict[str, Any], source: str) -> dict[str, Any]:
    """The build_model options of a best checkpoint's model."""
    options = TrainConfig.from_dict(saved["config"], source=source).model_options()
    options["pretrained"] = False  # the saved weights replace any download
    return options


@torch.no_grad()
def probabilities(
    model: nn.Module,
    mean: Tensor,
    std: Tensor,
    x: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> np.ndarray:
    """Softmax probabilities [N, classes] (float32) for uint8 images [N, C, H, W], normalized
    and batched as in training. Moves the model to `device`."""
    device = torch.device(device)
    labels = np.zeros(len(x), dtype=np.int64)
    split = DeviceSplit(x, labels, np.asarray(mean), np.asarray(std), device)
    batch_size = batch_size or eval_batch_size(device)
    return torch.softmax(predict(model.to(device), split, batch_size), dim=1).cpu().numpy()


def average(probs: list[np.ndarray], chosen: list[int]) -> np.ndarray:
    """Mean (float64) of the chosen members' probabilities, repeats counting again."""
    return np.mean(np.stack([probs[i] for i in chosen]).astype(np.float64), axis=0)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def greedy_selection(
    val_probs: list[np.ndarray], val_y: np.ndarray, steps: int | None = None
) -> list[int]:
    """Caruana et al. 2004: forward selection with replacement on the validation split.

    Start empty; `steps` times (default 2 * members) add the member that makes the averaged
    probabilities most accurate (ties: lower log-loss, then lower index). Returns the chosen
    indices, with repeats, of the best prefix of those additions (Caruana's choice of the
    ensemble size), so it is never worse on validation than the best single member.
    """
    if not val_probs:
        raise SweeperError("ensemble: greedy selection needs at least one member")
    steps = 2 * len(val_probs) if steps is None else steps
    if steps < 1:
        raise SweeperError(f"ensemble: greedy steps={steps} must be at least 1")
    stacked = np.stack([p.astype(np.float64) for p in val_probs])
    rows = np.arange(len(val_y))
    total = np.zeros_like(stacked[0])
    chosen: list[int] = []
    best_key: tuple[int, float] | None = None
    best_len = 0
    for step in range(1, steps + 1):
        candidates = (total[None] + stacked) / step  # [M, N, C]
        correct = (candidates.argmax(2) == val_y[None]).sum(1)
        losses = -np.log(np.clip(candidates[:, rows, val_y], 1e-12, None)).mean(1)
        pick = min(range(len(stacked)), key=lambda m: (-correct[m], losses[m], m))
        total += stacked[pick]
        chosen.append(pick)
        key = (int(correct[pick]), -float(losses[pick]))
        if best_key is None or key > best_key:
            best_key, best_len = key, step
    return chosen[:best_len]


@dataclass
class EnsembleReport:
    """Test and validation accuracy (0..1) of the members and their ensembles."""

    member_test_acc: list[float]
    member_val_acc: list[float]
    groups: dict[str, tuple[float, float]]  # config label -> (mean, std) of member test acc
    ensemble_test_acc: float
    ensemble_val_acc: float
    best_member_test_acc: float
    gain: float  # ensemble - best single member, on test
    greedy: list[int] | None
    greedy_test_acc: float | None
    greedy_val_acc: float | None
    member_groups: list[str]  # each member's config label
    member_names: list[str]  # each member's checkpoint file

    def table(self) -> list[dict[str, Any]]:
        """One row per member, then the plain average and the greedy selection."""
        keys = ("name", "group", "members", "greedy_weight", "val_acc", "test_acc")
        n, greedy = len(self.member_test_acc), self.greedy
        counts = [None if greedy is None else greedy.count(i) for i in range(n)]
        columns = (self.member_names, self.member_groups, [1] * n, counts)
        rows = list(zip(*columns, self.member_val_acc, self.member_test_acc, strict=True))
        mean = (self.ensemble_val_acc, self.ensemble_test_acc)
        rows.append(("ensemble (mean)", "ensemble", n, None, *mean))
        if greedy is not None:
            chosen = (self.greedy_val_acc, self.greedy_test_acc)
            rows.append(("ensemble (greedy)", "ensemble", len(set(greedy)), len(greedy), *chosen))
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _common_shape(
    members: list[tuple[str, Path]], saved: Sequence[dict[str, Any]], splits: dict[str, np.ndarray]
) -> tuple[int, int, int]:
    """The [C, H, W] every member takes; members of other datasets or shapes are refused, and so
    are empty splits or splits of other images."""
    first = saved[0]
    shape = (int(first["in_channels"]), int(first["image_size"]), int(first["image_size"]))
    for (_, path), ckpt in zip(members[1:], saved[1:], strict=True):
        if list(ckpt["classes"]) != list(first["classes"]):
            raise SweeperError(
                f"ensemble: {path} has classes {ckpt['classes']}, the first member "
                f"{members[0][1]} has {first['classes']}; members must share one dataset"
            )
        if (int(ckpt["in_channels"]), int(ckpt["image_size"])) != shape[:2]:
            raise SweeperError(
                f"ensemble: {path} takes {ckpt['in_channels']}x{ckpt['image_size']} images, "
                f"the first member {shape[0]}x{shape[1]}; members must share one input shape"
            )
    for name, x in splits.items():
        if len(x) == 0:
            raise SweeperError(f"ensemble: the {name} split is empty; it needs images to score")
        if tuple(x.shape[1:]) != shape:
            raise SweeperError(
                f"ensemble: {name} images are {tuple(x.shape[1:])}, the members take {shape}; "
                "load the dataset the members were trained on"
            )
    return shape


def evaluate(
    members: list[tuple[str, Path]],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    device: torch.device | str = "cpu",
    greedy: bool = False,
) -> tuple[Ensemble, EnsembleReport]:
    """Score every member once on val and test; return the plain-average Ensemble (on the CPU)
    and the report (greedy selection figures included when greedy=True)."""
    if not members:
        raise SweeperError("ensemble: no members given; pass (label, checkpoint) pairs")
    models, saved = zip(*(load_member(path) for _, path in members), strict=True)
    shape = _common_shape(members, saved, {"val": val[0], "test": test[0]})
    val_probs, test_probs = [], []
    for model, ckpt in zip(models, saved, strict=True):
        val_probs.append(probabilities(model, ckpt["mean"], ckpt["std"], val[0], device))
        test_probs.append(probabilities(model, ckpt["mean"], ckpt["std"], test[0], device))
        model.cpu()
    member_val = [accuracy(p, val[1]) for p in val_probs]
    member_test = [accuracy(p, test[1]) for p in test_probs]
    labels = [label for label, _ in members]
    stats = pd.Series(member_test).groupby(labels, sort=False).agg(["mean", "std"]).fillna(0.0)
    groups = {label: (float(mean), float(std)) for label, (mean, std) in stats.iterrows()}
    everyone = list(range(len(members)))
    ensemble_test = accuracy(average(test_probs, everyone), test[1])
    chosen = greedy_test = greedy_val = None
    if greedy:
        chosen = greedy_selection(val_probs, val[1])
        greedy_val = accuracy(average(val_probs, chosen), val[1])
        greedy_test = accuracy(average(test_probs, chosen), test[1])
    report = EnsembleReport(
        member_test_acc=member_test,
        member_val_acc=member_val,
        groups=groups,
        ensemble_test_acc=ensemble_test,
        ensemble_val_acc=accuracy(average(val_probs, everyone), val[1]),
        best_member_test_acc=max(member_test),
        gain=ensemble_test - max(member_test),
        greedy=chosen,
        greedy_test_acc=greedy_test,
        greedy_val_acc=greedy_val,
        member_groups=labels,
        member_names=[Path(path).name for _, path in members],
    )
    ensemble = Ensemble(
        list(models),
        [c["mean"] for c in saved],
        [c["std"] for c in saved],
        list(saved[0]["classes"]),
        image_size=shape[1],
        options=[member_options(c, str(p)) for c, (_, p) in zip(saved, members, strict=True)],
    )
    return ensemble, report
