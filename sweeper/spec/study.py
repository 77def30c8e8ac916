"""Study files: loading, validating, and turning an Optuna trial into a TrainConfig."""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from sweeper.errors import SweeperError, bad_value
from sweeper.spec.history import DEFAULT_LIMIT, BoundedHistory
from sweeper.spec.objectives import COSTS, pick_rule
from sweeper.spec.stopping import StopRule
from sweeper.spec.userfile import import_file, line_in, module_name_of, one_line
from sweeper.training.config import TrainConfig

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "gp", "nsga2")
PRUNERS = ("median", "halving", "hyperband", "none")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}


@dataclass
class Study:
    """What a study file declares. `space(trial)` returns TrainConfig keys."""

    name: str
    space: Callable[[optuna.Trial], dict[str, Any]]
    fixed: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys of every trial
    metric: str = "val_acc"  # the objective: val_acc (maximized) or val_loss (minimized)
    # accuracy against cost: [metric, *costs] (costs from objectives.COSTS, minimized); Optuna's
    # multi-objective study then keeps the Pareto front. None: the metric alone
    objectives: list[str] | None = None
    trials: int | None = 20  # finished (complete or pruned) trials, across launches and workers
    timeout: float | None = None  # seconds per launch
    epochs: int = 10  # maximum per trial
    patience: int | None = 3  # early stopping inside a trial; None: off
    sampler: str | optuna.samplers.BaseSampler = "tpe"  # a name, or any Optuna sampler object
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str | optuna.pruners.BasePruner = "median"  # a name, or any Optuna pruner object
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the sampler's seed
    # the best-of seed ensemble after the sweep: k configs x seeds; {} or k=0 turns it off
    ensemble: dict[str, Any] = field(default_factory=lambda: {"k": 3, "seeds": 3})
    reference: tuple[float, str] | None = None  # a result to beat, in the summary: (value, whose)
    # the sweep ends once stop_after finished trials in a row have not raised the best value by
    # more than min_delta (pruned trials count as not raising it); None: only the budget ends it
    stop_after: int | None = None
    min_delta: float = 0.0
    # earlier studies (same storage) or CSV files of configs (params as columns) whose configs a
    # new study trains first: the warm_top best complete trials of each study, every CSV row
    warm_start: list[str] = field(default_factory=list)
    warm_top: int = 3
    file: str = ""  # set by load_study
    file_hash: str = ""

    def __post_init__(self) -> None:
        first = self.objectives[0] if isinstance(self.objectives, list | tuple) else None
        if first in METRICS:  # the first objective is the metric (else validate() says why not)
            self.metric = first

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def objective_names(self) -> list[str]:
        return list(self.objectives or [self.metric])

    @property
    def directions(self) -> list[str]:
        return [self.direction] + ["minimize"] * (len(self.objective_names) - 1)

    @property
    def costs(self) -> list[str]:
        return self.objective_names[1:]

    @property
    def stop_rule(self) -> StopRule | None:
        return StopRule(self.stop_after, self.min_delta) if self.stop_after else None

    def config(
        self, params: dict[str, Any], overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        """The training config of a trial: fixed keys, then the space, then study-wide limits."""
        values = {
            **self.fixed,
            **params,
            "epochs": self.epochs,
            "patience": self.patience,
            "monitor": self.metric,
            **(overrides or {}),
        }
        return TrainConfig.from_dict(values, source=self.file or self.name)

    def trial_config(self, trial: optuna.Trial, overrides: dict[str, Any] | None = None):
        params = self.space(trial)
        if not isinstance(params, dict):
            raise SweeperError(
                f"{self.file}: space() must return a dict of config keys, "
                f"got {type(params).__name__}"
            )
        return self.config(params, overrides)

    def make_sampler(self, worker: int = 0) -> optuna.samplers.BaseSampler:
        """Each worker gets its own seed, so parallel workers do not suggest the same configs. A
        sampler object keeps the seed it was made with: each worker's copy is reseeded at random
        (the workers of one study import its file alike and would otherwise draw alike)."""
        if isinstance(self.sampler, optuna.samplers.BaseSampler):
            sampler = copy.deepcopy(self.sampler)
            if worker:
                sampler.reseed_rng()
            return sampler
        options = dict(self.sampler_options)
        # TPE only: how many finished trials it learns from (None: all), see spec/history.py
        history = options.pop("history", DEFAULT_LIMIT) if self.sampler == "tpe" else None
        seed = (self.seed + 1000 * worker) % 2**32
        if self.sampler == "grid":
            if "search_space" not in options:
                raise SweeperError(
                    f"{self.file}: sampler 'grid' needs sampler_options={{'search_space': "
                    "{'param': [values...]}}"
                )
            return optuna.samplers.GridSampler(seed=seed, **options)
        cls = {
            "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler,
            "qmc": optuna.samplers.QMCSampler,
            "gp": optuna.samplers.GPSampler,
            "nsga2": optuna.samplers.NSGAIISampler,
        }[self.sampler]
        if self.sampler == "tpe" and history is not None:
            return BoundedHistory(cls(seed=seed, **options), history)
        return cls(seed=seed, **options)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if isinstance(self.pruner, optuna.pruners.BasePruner):
            return self.pruner
        cls = {
            "median": optuna.pruners.MedianPruner,
            "halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "none": optuna.pruners.NopPruner,
        }[self.pruner]
        if self.pruner == "hyperband" and "max_resource" not in self.pruner_options:
            return cls(max_resource=self.epochs, **self.pruner_options)
        if self.pruner == "median" and not self.pruner_options:
            return cls(n_startup_trials=3, n_warmup_steps=1)
        return cls(**self.pruner_options)


def load_study(path: str | Path) -> Study:
    """Import a study file and validate it; every mistake is one line naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise SweeperError(f"{path}: no such study file")
    source = path.read_bytes()
    module_name = module_name_of(path)
    module = import_file(path, module_name)
    sys.modules[module_name] = module  # its model builders are found here (models.custom)
    study = getattr(module, "study", None)
    if not isinstance(study, Study):
        raise SweeperError(
            f"{path}: defines no `study = Study(name=..., space=...)` "
            "(see studies/quickstart.py for the shape)"
        )
    study.file = str(path)
    study.file_hash = hashlib.sha256(source).hexdigest()[:12]
    validate(study)
    return study


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and value >= low


# (field, whether the study's value fits, what is accepted): one line each when it does not
FIELD_CHECKS: list[tuple[str, Callable[[Study], bool], str]] = [
    ("name", lambda s: isinstance(s.name, str) and bool(s.name.strip()),
     "give the study a non-empty name"),
    ("space", lambda s: callable(s.space), "it must be a function space(trial) -> dict"),
    ("sampler", lambda s: isinstance(s.sampler, optuna.samplers.BaseSampler)
     or s.sampler in SAMPLERS, f"accepted: {', '.join(SAMPLERS)}, or an Optuna sampler object"),
    ("pruner", lambda s: isinstance(s.pruner, optuna.pruners.BasePruner) or s.pruner in PRUNERS,
     f"accepted: {', '.join(PRUNERS)}, or an Optuna pruner object"),
    ("metric", lambda s: s.metric in METRICS, f"accepted: {', '.join(METRICS)}"),
    ("trials", lambda s: s.trials is None or s.trials >= 1,
     "it must be 1 or more, or None with a timeout"),
    ("trials", lambda s: s.trials is not None or s.timeout is not None,
     "set trials, timeout, or both: the sweep needs a budget"),
    ("epochs", lambda s: s.epochs >= 1, "it must be 1 or more"),
    ("objectives", lambda s: s.objectives is None or (
        isinstance(s.objectives, list | tuple) and len(s.objectives) == len(set(s.objectives))
        and bool(s.objectives) and s.objectives[0] in METRICS
        and all(cost in COSTS for cost in s.objectives[1:])),
     f"a metric ({', '.join(METRICS)}) first, then costs from {', '.join(COSTS)}, each once"),
    ("pruner", lambda s: len(s.objective_names) == 1 or s.pruner in ("median", "none"),
     "with several objectives: 'median' (on the first objective) or 'none'; Optuna's pruners"
     " need reports, which multi-objective trials cannot make"),
    ("stop_after", lambda s: s.stop_after is None or _whole(s.stop_after, 1),
     "a whole number of trials, 1 or more (or None)"),
    ("min_delta", lambda s: isinstance(s.min_delta, int | float) and s.min_delta >= 0,
     "a number, 0 or more"),
    ("warm_start", lambda s: isinstance(s.warm_start, list | tuple)
     and all(isinstance(source, str) for source in s.warm_start),
     'a list of study names and CSV files, e.g. ["quickstart"]'),
    ("warm_top", lambda s: _whole(s.warm_top, 1),
     "a whole number of trials per earlier study, 1 or more"),
]  # fmt: skip


def validate(study: Study, draws: int = 32) -> None:
    """Check the settings, and draw configs from the space to catch bad suggested values."""
    where = study.file or study.name

    def bad(key: str, accepted: str) -> SweeperError:
        return bad_value(where, key, getattr(study, key), accepted)

    for key, fits, accepted in FIELD_CHECKS:
        if not fits(study):
            raise bad(key, accepted)
    unknown = set(study.ensemble) - {"k", "seeds", "epochs", "greedy", "pick"}
    if unknown:
        raise bad(
            "ensemble",
            f"unknown key(s) {sorted(unknown)}; accepted: k, seeds, epochs, greedy, pick",
        )
    if study.ensemble.get("pick"):
        try:
            pick_rule(study.ensemble["pick"], study.objective_names)
        except SweeperError as error:
            raise SweeperError(f"{where}: ensemble: {error}") from None
    reference = study.reference
    if reference is not None and not (
        isinstance(reference, tuple | list) and len(reference) == 2
        and isinstance(reference[0], int | float)
    ):  # fmt: skip
        raise bad("reference", 'give (value, "where it comes from"), e.g. (0.6657, "document 003")')
    try:
        study.make_sampler()
        study.make_pruner()
    except (TypeError, ValueError) as exc:
        raise SweeperError(f"{where}: sampler_options / pruner_options: {exc}") from None
    probe = optuna.create_study(
        direction=study.direction, sampler=optuna.samplers.RandomSampler(seed=study.seed)
    )
    for _ in range(draws):
        trial = probe.ask()
        try:
            study.trial_config(trial)
        except SweeperError as exc:
            text = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
            raise SweeperError(f"{text} (space() suggested {trial.params})") from None
        except Exception as exc:
            raise SweeperError(
                f"{where}:{line_in(exc, Path(where))}: space(): {one_line(exc)}"
            ) from None
        probe.tell(trial, 0.0)


def load_by_name_or_file(target: str) -> tuple[Study | None, str]:
    """A study file, or just a study name (for commands that only read stored results)."""
    if target.endswith(".py") or Path(target).is_file():
        study = load_study(target)
        return study, study.name
    return None, target


def open_study(spec: Study, storage: BaseStorage) -> optuna.Study:
    """Create the Optuna study on the first launch, load it on the next ones."""
    created = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=spec.directions,
        sampler=spec.make_sampler(),
        pruner=spec.make_pruner(),
        load_if_exists=True,
    )
    stored = [direction.name.lower() for direction in created.directions]
    if stored != spec.directions:
        raise SweeperError(
            f"{spec.file}: objectives {spec.objective_names} need directions {spec.directions},"
            f" but the stored study '{spec.name}' has {stored}; rename the study"
        )
    if len(stored) > 1:
        created.set_metric_names(spec.objective_names)  # Optuna's tables and plots name them
    return created
