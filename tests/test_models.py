"""Tests for the model zoo: shapes, parameter counts, options, errors and pretrained loading."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from typing import Any
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn

from sweeper.errors import SweeperError
from sweeper.training.models import MODEL_NAMES, MODEL_OPTIONS, build_model
from sweeper.training.models.registry import BUILDERS

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    """Total parameter count."""
    return sum(p.numel() for p in model.parameters())


def test_public_constants() -> None:
    """MODEL_NAMES and MODEL_OPTIONS hold the agreed names, keys and defaults."""
    assert MODEL_NAMES == (
        "mlp",
        "lenet5",
        "cnn1",
        "cnn2",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet9",
    )
    assert MODEL_OPTIONS == {
        "model": None,
        "activation": "relu",
        "init": "default",
        "dropout": 0.0,
        "batch_norm": None,
        "hidden": None,
        "shortcut": "A",
        "pretrained": False,
        "freeze_features": False,
        "model_args": {},
        "model_code": None,
    }


def test_every_name_has_a_builder() -> None:
    """The registry table covers exactly MODEL_NAMES."""
    assert set(BUILDERS) == set(MODEL_NAMES)


def test_import_stays_torch_free() -> None:
    """Importing sweeper.training.models (names, options) does not import torch."""
    code = "import sys, sweeper.training.models; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_cifar10(name: str) -> None:
    """Every model maps [2, 3, 32, 32] to [2, 10] logits."""
    model = build_model({"model": name})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("classes", "channels", "size"), [(100, 3, 32), (10, 1, 28)])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sgd_step(name: str, classes: int, channels: int, size: int) -> None:
    """One SGD step runs and changes the weights, for CIFAR-100 and MNIST shapes."""
    torch.manual_seed(0)
    model = build_model({"model": name}, num_classes=classes, in_channels=channels, image_size=size)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, channels, size, size), torch.randint(0, classes, (2,))
    logits = model(x)
    assert logits.shape == (2, classes)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("options", "count"),
    [
        ({"model": "lenet5"}, 62_006),
        ({"model": "cnn2"}, 25_578),
        ({"model": "resnet20"}, 269_722),
        ({"model": "resnet20", "shortcut": "B"}, 272_474),
        ({"model": "resnet32"}, 464_154),
    ],
)
def test_param_counts(options: dict[str, Any], count: int) -> None:
    """Parameter counts match the reference architectures (10 classes, 3x32x32)."""
    assert n_params(build_model(options)) == count


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_shortcut_b_adds_projections(name: str) -> None:
    """Shortcut B (1x1 conv + BN) has more parameters than the parameter-free option A."""
    a = n_params(build_model({"model": name, "shortcut": "A"}))
    b = n_params(build_model({"model": name, "shortcut": "B"}))
    assert b > a


@pytest.mark.parametrize("batch_norm", [False, True])
def test_lenet_intermediate_shapes(batch_norm: bool) -> None:
    """LeNet-5 on 3x32x32 goes [6,28,28], [6,14,14], [16,10,10], [16,5,5]."""
    model = build_model({"model": "lenet5", "batch_norm": batch_norm}).eval()
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norm


@pytest.mark.parametrize("size", [8, 96])
@pytest.mark.parametrize("name", ["mlp", "lenet5", "cnn1", "cnn2", "vgg11", "resnet20", "resnet9"])
def test_image_sizes(name: str, size: int) -> None:
    """Small and large square images give [B, classes] logits."""
    model = build_model({"model": name}, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize(
    ("activation", "cls"),
    [
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("elu", nn.ELU),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
    ],
)
@pytest.mark.parametrize("name", ["mlp", "cnn2", "vgg11", "resnet20", "resnet9"])
def test_activations(name: str, activation: str, cls: type[nn.Module]) -> None:
    """The chosen activation is used everywhere, resnet blocks included."""
    model = build_model({"model": name, "activation": activation})
    kinds = {type(m) for m in model.modules() if type(m).__module__.endswith("activation")}
    assert kinds == {cls}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("init", ["default", "he_normal", "xavier_normal"])
@pytest.mark.parametrize("name", ["lenet5", "vgg11", "resnet20", "resnet9"])
def test_inits(name: str, init: str) -> None:
    """Each init builds; explicit schemes zero biases and reset BatchNorm to weight 1, bias 0."""
    model = build_model({"model": name, "init": init})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    if init == "default" and name != "resnet20":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


def test_he_normal_uses_fan_out() -> None:
    """he_normal conv weights have std close to sqrt(2 / (out_channels * k * k))."""
    torch.manual_seed(0)
    model = build_model({"model": "vgg11", "init": "he_normal"})
    conv = model.features[-4]
    assert isinstance(conv, nn.Conv2d)
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_dropout_hidden_and_batch_norm_options() -> None:
    """dropout, hidden and batch_norm shape the classifier and the features as documented."""
    vgg = build_model({"model": "vgg16", "hidden": [512, 128], "dropout": 0.5})
    linears = [m for m in vgg.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128), (128, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in vgg.classifier) == 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in vgg.features)
    plain = build_model({"model": "vgg11", "batch_norm": False})
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    mlp = build_model({"model": "mlp", "hidden": (64,), "dropout": 0.2}, image_size=8)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(192, 64), (64, 10)]
    assert any(isinstance(m, nn.Dropout) for m in mlp.modules())
    assert any(
        isinstance(m, nn.BatchNorm2d)
        for m in build_model({"model": "cnn1", "batch_norm": True}).modules()
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model({"model": "cnn1"}).modules())


def test_options_not_mutated() -> None:
    """build_model leaves the caller's dict and MODEL_OPTIONS alone."""
    options = {"model": "mlp", "hidden": [32]}
    build_model(options)
    assert options == {"model": "mlp", "hidden": [32]}
    assert MODEL_OPTIONS["hidden"] is None


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"model": "vgg15"}, ["model", "'vgg15'", "vgg16", "resnet9"]),
        ({}, ["model", "missing"]),
        ({"model": "mlp", "dropuot": 0.1}, ["'dropuot'", "'dropout'", "freeze_features"]),
        ({"model": "mlp", "activation": "relux"}, ["activation", "'relux'", "leaky_relu"]),
        ({"model": "mlp", "init": "he"}, ["init", "'he'", "he_normal"]),
        ({"model": "mlp", "dropout": 1.5}, ["dropout", "1.5", "[0, 1)"]),
        ({"model": "mlp", "dropout": True}, ["dropout", "True"]),
        ({"model": "mlp", "hidden": [0]}, ["hidden", "[0]", "positive"]),
        ({"model": "mlp", "hidden": 512}, ["hidden", "512"]),
        ({"model": "resnet20", "shortcut": "C"}, ["shortcut", "'C'", "A, B"]),
        ({"model": "cnn2", "batch_norm": "yes"}, ["batch_norm", "'yes'"]),
        ({"model": "resnet20", "pretrained": True}, ["pretrained", "resnet20", "vgg16"]),
        ({"model": "cnn2", "freeze_features": True}, ["freeze_features", "cnn2"]),
    ],
)
def test_bad_options(options: dict[str, Any], words: list[str]) -> None:
    """Bad options raise one-line SweeperErrors naming the key, the value and what is accepted."""
    with pytest.raises(SweeperError) as info:
        build_model(options)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_bad_sizes(kwargs: dict[str, int], word: str) -> None:
    """Unusable data shapes raise a SweeperError naming the argument."""
    with pytest.raises(SweeperError, match=word):
        build_model({"model": "cnn2"}, **kwargs)


def test_pretrained_needs_three_channels() -> None:
    """ImageNet features cannot take grayscale input."""
    with pytest.raises(SweeperError, match="pretrained.*in_channels"):
        build_model({"model": "vgg11", "pretrained": True}, in_channels=1)


def _no_network(*args: Any, **kwargs: Any) -> None:
    """Stand-in for urlopen: fail at once, as an offline machine does."""
    raise urllib.error.URLError("no network in tests")


def test_pretrained_loads_cached_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """features come from the cached torchvision file, stay frozen, and the new head trains."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    weights = torchvision.models.VGG11_Weights.IMAGENET1K_V1
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder)
    # torchvision's own vgg11 feature layers (random), plus a stand-in classifier entry:
    # the full vgg11 state dict is 530 MB, too slow to write in a unit test.
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)
    torch.save(state, os.path.join(folder, os.path.basename(urlparse(weights.url).path)))

    options = {
        "model": "vgg11",
        "batch_norm": False,
        "pretrained": True,
        "freeze_features": True,
        "hidden": [512, 128],
        "init": "he_normal",
    }
    model = build_model(options)
    loaded = model.features.state_dict()
    assert loaded.keys() == features.state_dict().keys()
    for key, value in features.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert all(not p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_missing_file_names_it(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an empty TORCH_HOME and no network, the error says which file to put where."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    start = time.monotonic()
    with pytest.raises(SweeperError) as info:
        build_model({"model": "vgg16", "pretrained": True})
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "pretrained" in message
    assert "vgg16_bn-6c64b313.pth" in message
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in message
    assert "TORCH_HOME" in message


def test_pretrained_wrong_file_is_reported(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached file that does not fit the model gives a SweeperError, not a raw traceback."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder)
    torch.save({"features.0.weight": torch.zeros(1)}, os.path.join(folder, "vgg11-8a719046.pth"))
    with pytest.raises(SweeperError, match="does not match vgg11"):
        build_model({"model": "vgg11", "batch_norm": False, "pretrained": True})


def test_pretrained_corrupt_file_is_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable cached file gives a SweeperError saying to delete it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", _no_network)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder)
    with open(os.path.join(folder, "vgg13_bn-abd245e5.pth"), "w") as f:
        f.write("junk")
    with pytest.raises(SweeperError, match="cannot load .*vgg13_bn-abd245e5.pth.*delete it"):
        build_model({"model": "vgg13", "pretrained": True})


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize(
    ("name", "cfg"), [("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")]
)
def test_vgg_features_match_torchvision(name: str, cfg: str, batch_norm: bool) -> None:
    """Our features take torchvision's features state dict as is (same keys and shapes)."""
    theirs = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[cfg], batch_norm)
    ours = build_model({"model": name, "batch_norm": batch_norm}).features
    ours.load_state_dict(theirs.state_dict())
