"""`build_model`: validate the options, then hand them to the family that builds the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from sweeper.training.models.cnn import build as build_cnn
from sweeper.training.models.custom import build as build_custom
from sweeper.training.models.custom import is_custom, takes
from sweeper.training.models.layers import init_weights
from sweeper.training.models.lenet import build as build_lenet
from sweeper.training.models.mlp import build as build_mlp
from sweeper.training.models.options import check_options, check_sizes
from sweeper.training.models.resnet import build as build_resnet
from sweeper.training.models.resnet9 import build as build_resnet9
from sweeper.training.models.vgg import build as build_vgg

# Each builder takes (name, checked options, num_classes, in_channels, image_size) and returns
# the model with its family's defaults filled in and its init applied.
BUILDERS: dict[str, Callable[[str, dict[str, Any], int, int, int], nn.Module]] = {
    "mlp": build_mlp,
    "lenet5": build_lenet,
    **dict.fromkeys(("cnn1", "cnn2"), build_cnn),
    **dict.fromkeys(("vgg11", "vgg13", "vgg16", "vgg19"), build_vgg),
    **dict.fromkeys(("resnet20", "resnet32", "resnet44", "resnet56"), build_resnet),
    "resnet9": build_resnet9,
}


def build_model(
    options: Mapping[str, Any], num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """Build the model named by options["model"] for [B, in_channels, image_size, image_size]."""
    opts = check_options(options)
    check_sizes(num_classes, in_channels, image_size)
    name = opts["model"]
    if is_custom(name):  # sweeper's init, unless the builder takes init itself
        model = build_custom(opts, num_classes, in_channels, image_size)
        return model if takes(name, "init") else init_weights(model, opts["init"])
    model = BUILDERS[name](name, opts, num_classes, in_channels, image_size)
    if opts["freeze_features"]:
        model.features.requires_grad_(False)
    return model
