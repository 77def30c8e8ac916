"""VGG11/13/16/19 for small images, with optional ImageNet-pretrained features."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from sweeper.errors import SweeperError
from sweeper.training.models.layers import classifier_layers, conv_layers, init_weights

CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
    + [512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG features (torchvision layer order), global average pool, MLP classifier."""

    def __init__(self, features: list[nn.Module], classifier: list[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(*classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def load_pretrained(model: VGG, name: str, batch_norm: bool) -> None:
    """Copy torchvision's ImageNet `features.*` weights into model.features (cache or download)."""
    import torchvision  # only for pretrained weights: importing it takes seconds

    enum_name = name.upper() + ("_BN" if batch_norm else "") + "_Weights"
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    filename = os.path.basename(urlparse(weights.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, filename)
    cached = os.path.exists(path)
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:
        if cached:
            raise SweeperError(
                f"pretrained: cannot load {path} (not a readable torch file); "
                "delete it to download again"
            ) from exc
        raise SweeperError(
            f"pretrained: cannot download {filename}; put it in {folder}/ "
            "(set TORCH_HOME to move that folder)"
        ) from exc
    prefix = "features."
    features = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.features.load_state_dict(features)
    except RuntimeError as exc:
        raise SweeperError(
            f"pretrained: {path} does not match {name} features (batch_norm={batch_norm})"
        ) from exc


def build(
    name: str, opts: dict[str, Any], num_classes: int, in_channels: int, image_size: int
) -> VGG:
    """VGG for the options (batch_norm on, hidden (512,) by default), then ImageNet features;
    ceil-mode pooling and the global pool make any image size work."""
    if opts["pretrained"] and in_channels != 3:
        raise SweeperError(f"pretrained: ImageNet weights need in_channels 3, got {in_channels}")
    batch_norm = True if opts["batch_norm"] is None else opts["batch_norm"]
    features: list[nn.Module] = []
    channels = in_channels
    for v in CFGS[name]:
        if v == "M":
            features.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            features += conv_layers(channels, int(v), 3, 1, opts["activation"], batch_norm)
            channels = int(v)
    hidden = (512,) if opts["hidden"] is None else opts["hidden"]
    head = classifier_layers(channels, hidden, num_classes, opts["activation"], opts["dropout"])
    model = init_weights(VGG(features, head), opts["init"])
    if opts["pretrained"]:
        load_pretrained(model, name, batch_norm)
    return model
