"""TrainConfig: every setting of one training run, defined once, validated once."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeper.errors import SweeperError, bad_value, first_line
from sweeper.spec.userfile import code_hash, is_reference, reference
from sweeper.training.models.options import MODEL_OPTIONS, check_options

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "cosine", "onecycle")
MONITORS = ("val_acc", "val_loss")


@dataclass
class TrainConfig:
    """One training run. Units are given where they are not obvious."""

    # model (options handed to sweeper.models.build_model)
    # a zoo name, or your own builder: a function, "package.module:function" or "file.py:function"
    model: str = "cnn2"
    model_args: dict[str, Any] = field(default_factory=dict)  # your builder's own options
    model_code: str | None = None  # sha256 of your builder's file (set when the config is made)
    activation: str = "relu"
    init: str = "default"
    dropout: float = 0.0
    batch_norm: bool | None = None  # None: the model's own default
    hidden: list[int] | None = None  # classifier / MLP hidden units; None: model default
    shortcut: str = "A"  # resnet20..56: "A" zero-padding identity, "B" projection
    pretrained: bool = False  # vgg: ImageNet features from torchvision
    freeze_features: bool = False

    # data
    dataset: str = "cifar10"  # a torchvision name or a path to an ImageFolder dir / .tar.gz
    data_dir: str | None = None  # searched first; default $SWEEPER_DATA_DIR, then ./data
    image_size: int | None = None  # resize once at load time; None keeps the native size
    val_size: float = 0.1  # held out of the train split for validation: a fraction, or images
    train_size: int | None = None  # a deterministic slice of the remaining train split
    split_seed: int = 0  # the train/validation split depends on this alone
    augment: bool = True  # random crop (padding 4) + horizontal flip, per image

    # optimization
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2, decoupled for adamw
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "none"
    milestones: list[float] = field(
        default_factory=lambda: [0.5, 0.75]
    )  # step: fractions of epochs
    gamma: float = 0.1  # step: lr factor at each milestone ("1/10 twice")
    warmup_epochs: float = 0.0  # linear warmup from 0, then the schedule
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global grad norm
    patience: int | None = None  # early stopping: epochs without improvement; None: off
    monitor: str = "val_acc"  # early stopping and best-epoch metric
    eval_batch_size: int | None = None  # None: by device (train.eval_batch_size)

    # execution
    seed: int = 0  # weights, batch order and augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # None is auto: bf16 autocast on CUDA and on CPUs with native bf16, channels_last everywhere
    bf16: bool | None = None
    channels_last: bool | None = None
    threads: int | None = None  # CPU threads for this process; None: torch's default

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def merged(cls, file: str | None, run: dict[str, Any] | None, run_id: str | None,
               flags: dict[str, Any]) -> TrainConfig:  # fmt: skip
        """`sweeper train`'s config: a trial's run config, then a YAML/JSON file's keys, then
        flags, each over the one before; errors name where the value came from."""
        values = {**(run or {}), **(load_config_file(file) if file else {})}
        source = file or (f"run {run_id}" if run_id else "flags")
        if flags:
            source = f"{file} and flags" if file else "flags"
        return cls.from_dict({**values, **flags}, source=source)

    def model_options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in MODEL_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build and validate; unknown keys and bad values raise SweeperError naming them. With
        your own model builder, keys that are no setting here are its options (model_args)."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = _builder_options(values, names)
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise SweeperError(
                    f"{source}: unknown key '{key}'; {hint}accepted: {', '.join(names)}"
                )
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        coerced = {k: _coerce(k, v, types[k], source) for k, v in values.items()}
        config = cls(**coerced)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        def bad(key: str, accepted: str) -> SweeperError:
            return bad_value(source, key, getattr(self, key), accepted)

        check_options(self.model_options())
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"accepted: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"accepted: {', '.join(SCHEDULES)}")
        if self.monitor not in MONITORS:
            raise bad("monitor", f"accepted: {', '.join(MONITORS)}")
        positive = ("lr", "batch_size", "epochs", "gamma")
        for key in positive:
            if not getattr(self, key) > 0:
                raise bad(key, "it must be greater than 0")
        for key in ("weight_decay", "momentum", "warmup_epochs", "val_size"):
            if getattr(self, key) < 0:
                raise bad(key, "it must be 0 or more")
        optional = ("train_size", "patience", "grad_clip", "image_size", "threads")
        for key in (*optional, "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise bad(key, "it must be greater than 0, or left out")
        if self.val_size >= 1 and not float(self.val_size).is_integer():
            raise bad("val_size", "give a fraction below 1 (0.1) or a whole number of images")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "it must be in [0, 1)")
        if not all(0 < m < 1 for m in self.milestones):
            raise bad("milestones", "each must be a fraction of the epochs, between 0 and 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "accepted: auto, cpu, cuda, cuda:N")


def _builder_options(values: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A builder or data function becomes its reference; a builder's options move into
    model_args."""
    values = {k: reference(v, k) if k in ("model", "dataset") and callable(v) else v
              for k, v in values.items()}  # fmt: skip
    if not is_reference(values.get("model")):
        return values
    given = values.get("model_args") or {}
    if not isinstance(given, dict):
        return values  # _coerce says what is wrong with it
    args = {**given, **{key: value for key, value in values.items() if key not in names}}
    values = {key: value for key, value in values.items() if key in names}
    if values.get("model_code") is None:
        values["model_code"] = code_hash(values["model"])
    return {**values, "model_args": args}


def json_mapping(text: str) -> dict[str, Any]:
    """A dict-valued flag (--model-args '{"width": 32}'); argparse shows the message."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object, e.g. '{{\"width\": 32}}'; got {text}"
        )
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of TrainConfig keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweeperError(f"--config: cannot read {path}: {exc.strerror}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = first_line(exc)
        raise SweeperError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {first}"
        ) from None
    if not isinstance(values, dict):
        raise SweeperError(
            f"{path}: expected a mapping of config keys, got {type(values).__name__}"
        )
    return values


def _coerce(key: str, value: Any, annotation: str, source: str) -> Any:
    """Check a value against its field's type; ints are accepted where floats are, and "auto"
    where a bool may be None (auto)."""
    if value is None or (value == "auto" and annotation == "bool | None"):
        if "None" in annotation:
            return None
        raise SweeperError(f"{source}: {key} must not be empty")
    base = annotation.replace(" | None", "")
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list[int]": isinstance(value, list | tuple)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "list[float]": isinstance(value, list | tuple)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value),
        "dict[str, Any]": isinstance(value, dict),
    }[base]
    if not ok:
        raise bad_value(source, key, value, f"expected {base}")
    if base == "float":
        return float(value)
    if base.startswith("list"):
        return list(value)
    return value
