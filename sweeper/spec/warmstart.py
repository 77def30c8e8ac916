"""Warm starts: a new study first trains the best configs of earlier studies (same storage) or
the rows of a CSV, as far as they fit its own search space."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from sweeper.errors import SweeperError
from sweeper.records import Attr
from sweeper.spec.objectives import ranked
from sweeper.spec.study import Study
from sweeper.stores.storage import load_stored_study


def enqueue_warm_start(
    study: Study, optuna_study: optuna.Study, storage: BaseStorage, url: str
) -> list[str]:
    """Queue the warm-start configs of a study that has no trials yet; return what to tell the
    user: what was queued, and each parameter left out because the new space has no room for it."""
    if not study.warm_start or optuna_study.get_trials(deepcopy=False):
        return []
    space = search_space(study)
    left_out: dict[str, list[str]] = {}  # parameter -> why, for each config it was left out of
    queued = 0
    for source in study.warm_start:
        for origin, params in configs_of(source, study, storage, url):
            kept = {}
            for name, value in params.items():
                problem = misfit(name, value, space)
                if problem:
                    left_out.setdefault(name, []).append(f"{origin}: {problem}")
                else:
                    kept[name] = value
            optuna_study.enqueue_trial(kept, user_attrs={Attr.WARM_START: origin},
                                       skip_if_exists=True)  # fmt: skip
            queued += 1
    lines = [f"warm start: {queued} configs from {', '.join(study.warm_start)} queued first"]
    for name, problems in left_out.items():
        more = f" (and {len(problems) - 1} more configs)" if len(problems) > 1 else ""
        lines.append(f"warm start: {name} left out, the new space draws it: {problems[0]}{more}")
    return lines


def configs_of(
    source: str, study: Study, storage: BaseStorage, url: str
) -> list[tuple[str, dict[str, Any]]]:
    """(where it came from, params) of a CSV file's rows or of an earlier study's top trials."""
    if source.endswith(".csv"):
        path = Path(source) if Path(source).is_absolute() else Path(study.file).parent / source
        if not path.is_file():
            raise SweeperError(f"{study.file}: warm_start: no such CSV file {path}")
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        return [(f"{path.name} row {i + 1}", {k.removeprefix("params."): _number(v)
                 for k, v in row.items() if v not in ("", None)})
                for i, row in enumerate(rows)]  # fmt: skip
    earlier = load_stored_study(source, storage, url)
    done = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = ranked(done, earlier)[: study.warm_top]
    return [(f"{source} trial {t.number}", dict(t.params)) for t in best]


def search_space(study: Study, draws: int = 64) -> dict[str, BaseDistribution]:
    """The parameters the study's space suggests, and their distributions (from random draws)."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space: dict[str, BaseDistribution] = {}
    for _ in range(draws):
        trial = probe.ask()
        study.space(trial)
        space.update(trial.distributions)
        probe.tell(trial, 0.0)
    return space


def misfit(name: str, value: Any, space: dict[str, BaseDistribution]) -> str | None:
    """Why `name=value` does not fit the new space, or None if it does."""
    distribution = space.get(name)
    if distribution is None:
        return f"{name}={value!r} is not a parameter of the new space"
    if isinstance(distribution, CategoricalDistribution):
        fits = value in distribution.choices
    elif isinstance(distribution, FloatDistribution | IntDistribution):
        fits = isinstance(value, int | float) and distribution.low <= value <= distribution.high
    else:
        fits = True
    return None if fits else f"{name}={value!r} is outside the new space ({distribution})"


def _number(text: str) -> Any:
    """A CSV cell as the int, float or bool it spells, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
