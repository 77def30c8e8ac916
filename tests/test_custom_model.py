"""Your own network: a builder in the study file or a module, checked at launch, built for the
data, and rebuilt only by the same code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, sweeper_here

from sweeper.errors import SweeperError
from sweeper.spec.study import load_study
from sweeper.training.config import TrainConfig
from sweeper.training.models import build_model
from sweeper.training.models.custom import BuilderError

STUDY = """
import optuna
from torch import nn
from sweeper import Study


def tiny(width: int, num_classes: int, in_channels: int, dropout: float = 0.0):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(width, num_classes))


def space(trial):
    return {"model": tiny, "width": trial.suggest_int("width", 4, 8), "dropout": 0.1, **EXTRA}


EXTRA = {}
study = Study(name="mine", space=space, trials=2)
"""

MODULE = """
from torch import nn


def flat(num_classes, in_channels, image_size, hidden=None):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


def raises(num_classes):
    raise ValueError("no such layer")


def not_a_module():
    return 3


def wrong_shape(in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, 7))


def any_options(**options):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, options["num_classes"]))
"""


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of builders, `mynets_<test>` (unique per test: imports are cached)."""
    name = f"mynets_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_builder_in_the_study_file_becomes_a_reference_its_options_and_a_hash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mine.py"
    path.write_text(STUDY)
    spec = load_study(path)
    import optuna

    config = spec.trial_config(optuna.trial.FixedTrial({"width": 6}))
    assert config.model == f"{path.resolve()}:tiny"
    assert config.model_args == {"width": 6}
    assert config.dropout == 0.1 and len(config.model_code) == 16
    model = build_model(config.model_options(), 10, 3, 32)
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert model[-1].in_features == 6 and model[-2].p == 0.1  # width and dropout reached it
    again = TrainConfig.from_dict(config.to_dict())  # what a checkpoint and an MLflow run keep
    assert again == config


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('{"widht": 3}', "model_args: tiny() takes no option 'widht' (did you mean 'width'?)"),
        ('{"layers": {"a": 1}}', "model_args: layers={'a': 1}; a builder's options are numbers"),
    ],
)
def test_an_option_the_builder_does_not_take_stops_the_launch_in_one_line(
    tmp_path: Path, extra: str, expected: str
) -> None:
    path = tmp_path / "mine.py"
    path.write_text(STUDY.replace("EXTRA = {}", f"EXTRA = {extra}"))
    done = sweeper_here("launch", str(path), "--dir", str(tmp_path / "sweep"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert str(path) in done.stderr
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def test_a_builder_from_a_module_gets_the_data_sizes_it_names(nets: str) -> None:
    config = TrainConfig.from_dict({"model": f"{nets}:flat"})
    model = build_model(config.model_options(), 5, 1, 28)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    takes_any = TrainConfig.from_dict({"model": f"{nets}:any_options", "depth": 3})
    assert takes_any.model_args == {"depth": 3}  # **options takes every option
    assert build_model(takes_any.model_options(), 4, 3, 32)(torch.zeros(1, 3, 32, 32)).shape[1] == 4


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("raises", "raises() raised ValueError: no such layer ("),
        ("not_a_module", "not_a_module() returned int, not an nn.Module"),
        ("wrong_shape", "wrong_shape() returns outputs of shape [2, 7] for 2 images; it must"
         " return [2, 10], one logit per class"),
    ],
)  # fmt: skip
def test_a_builder_that_fails_fails_its_trial_in_one_line(
    nets: str, builder: str, expected: str
) -> None:
    options = TrainConfig.from_dict({"model": f"{nets}:{builder}"}).model_options()
    with pytest.raises(BuilderError) as error:
        build_model(options, 10, 3, 32)
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("nosuchmodule_xyz:net", "cannot import nosuchmodule_xyz"),
        ("{nets}:missing", "defines no function 'missing'"),
        ("/nowhere/nets.py:net", "no such file /nowhere/nets.py"),
        ("cnn2", None),
    ],
)
def test_a_reference_that_names_nothing_is_one_line(nets: str, model: str, expected) -> None:
    if expected is None:  # a zoo model takes no options of its own
        with pytest.raises(SweeperError, match="unknown key 'width'"):
            TrainConfig.from_dict({"model": model, "width": 3})
        return
    with pytest.raises(SweeperError) as error:
        TrainConfig.from_dict({"model": model.format(nets=nets)})
    assert expected in str(error.value) and str(error.value).startswith("model: ")


def test_a_model_whose_builder_file_changed_is_refused(tmp_path: Path, nets: str) -> None:
    options = TrainConfig.from_dict({"model": f"{nets}:flat"}).model_options()
    build_model(options, 10, 3, 32)
    file = tmp_path / f"{nets}.py"
    file.write_text(file.read_text() + "\n# tuned\n")
    with pytest.raises(SweeperError, match="has changed since this model was trained"):
        build_model(options, 10, 3, 32)


def test_a_lambda_or_a_notebook_function_is_refused_with_the_fix() -> None:
    with pytest.raises(SweeperError, match="not a function defined at the top of a file"):
        TrainConfig.from_dict({"model": lambda: None})


def test_a_function_of_python_or_an_installed_package_is_never_called_as_a_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered model's JSON may come from a shared store: a forged reference to a public
    file (whose hash anyone can compute) must not run it."""
    for ref in (
        "subprocess:getoutput",
        "os:system",
        "sweeper.training.models.registry:build_model",
    ):
        with pytest.raises(SweeperError, match="does not call for you"):
            TrainConfig.from_dict({"model": ref, "cmd": "touch pwned"})
    options = {"model": "subprocess:getoutput", "model_args": {"cmd": f"touch {tmp_path}/x"}}
    with pytest.raises(SweeperError, match="SWEEPER_TRUSTED_MODULES"):
        build_model(options, 10, 3, 32)
    assert not (tmp_path / "x").exists()
    # torchvision's and timm's builders are trusted: num_classes reaches them through **kwargs
    resnet = TrainConfig.from_dict({"model": "torchvision.models:resnet18"}).model_options()
    assert build_model(resnet, 10, 3, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    monkeypatch.setenv("SWEEPER_TRUSTED_MODULES", "timm")
    with pytest.raises(SweeperError, match="does not call for you"):
        build_model(resnet, 10, 3, 32)


def test_model_args_that_are_not_a_json_object_are_one_line() -> None:
    done = sweeper_here("train", "--model", "mynets:net", "--model-args", "{width: 3}")
    assert done.returncode == 2
    assert "--model-args: expected a JSON object, e.g. '{\"width\": 32}'" in done.stderr


def test_the_packages_a_venv_borrows_through_a_pth_file_are_installed_ones_too(
    tmp_path: Path,
) -> None:
    """A venv that reaches another's site-packages through a .pth file (as bench/suite.py's
    checkouts do): a function of those packages is refused as one of its own would be."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    lent = [p for p in sys.path if Path(p).name == "site-packages"]
    (site / "lent.pth").write_text("\n".join([str(REPO), *lent]) + "\n")
    code = "from sweeper.spec.userfile import resolve; resolve('yaml:safe_load', 'model')"
    done = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1 and "which sweeper does not call for you" in done.stderr, done
