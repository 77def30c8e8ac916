"""An Ensemble as plain data in one folder, and back: the registered model's format.

`weights.safetensors` holds the members' tensors and nothing else; `ensemble.json` holds what
rebuilds the networks around them: each member's build_model options, input normalization and
weight, the class names and the input shape. Reading runs no code from the files (no pickle):
sweeper's own model builders make the networks, so a model on a shared tracking server cannot
run code on the machine that loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sweeper.ensemble.evaluate import Ensemble
from sweeper.errors import SweeperError, first_line
from sweeper.training.models import build_model

FORMAT = "sweeper-ensemble"
VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "ensemble.json"


def write(ensemble: Ensemble, folder: Path) -> Path:
    """Write `ensemble` as weights.safetensors and ensemble.json into `folder` (created)."""
    if ensemble.options is None:
        raise SweeperError(
            "ensemble: its members' model options are unknown (built without options=); "
            "build it with sweeper.ensemble.evaluate"
        )
    channels, size = ensemble.input_shape
    members = [
        {"options": options, "mean": mean.flatten().tolist(), "std": std.flatten().tolist(),
         "weight": float(weight)}
        for options, mean, std, weight in zip(
            ensemble.options, ensemble.means, ensemble.stds, ensemble.weights, strict=True
        )
    ]  # fmt: skip
    config = {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(ensemble.classes),
        "input_shape": [channels, size, size],  # [C, H, W] of images scaled 0..1
        "members": members,
    }
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ensemble.members.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def read(folder: Path) -> Ensemble:
    """The Ensemble saved by `write` in `folder`, on the CPU in eval mode. A file that is
    missing, foreign or tampered with is a SweeperError (the caller prefixes its command)."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SweeperError(f"cannot read {path} ({first_line(exc)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SweeperError(f"{path} is not a sweeper ensemble config")
    if config.get("version") != VERSION:
        raise SweeperError(
            f"{path} has version {config.get('version')!r}; this sweeper reads "
            f"version {VERSION}: upgrade sweeper"
        )
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise SweeperError(
            f"cannot read {folder / WEIGHTS} as safetensors ({first_line(exc)})"
        ) from None
    try:
        return _build(config, tensors)
    except (KeyError, TypeError, ValueError, RuntimeError, SweeperError) as exc:
        raise SweeperError(
            f"{folder} does not rebuild ({first_line(exc)}); its files do not match each other"
        ) from None


def _build(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Ensemble:
    channels, size, _ = (int(d) for d in config["input_shape"])
    classes = [str(c) for c in config["classes"]]
    members = config["members"]
    for m in members:
        if not len(m["mean"]) == len(m["std"]) == channels:
            raise ValueError(f"a member's mean and std must have {channels} values, one a channel")
    models = nn.ModuleList(build_model(m["options"], len(classes), channels, size) for m in members)
    models.load_state_dict(tensors)  # strict: every tensor and only those
    return Ensemble(
        list(models),
        [torch.tensor(m["mean"], dtype=torch.float32) for m in members],
        [torch.tensor(m["std"], dtype=torch.float32) for m in members],
        classes,
        weights=[m["weight"] for m in members],
        image_size=size,
        options=[m["options"] for m in members],
    )
