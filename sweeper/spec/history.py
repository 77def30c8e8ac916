"""A sampler that learns from a bounded share of a long study's trials.

Optuna's TPE reads every trial at each suggestion: a trial's 4 suggestions take about 9 ms at
1,000 finished trials and 74 ms at 10,000 (bench/sampler.py, 2 cores), which 10,000 trials pay
10,000 times. None of its options bounds that. Past `limit` finished trials, this wrapper shows
the sampler the running trials, the best `limit // 10` finished ones (TPE's "good" group is at
most the best 25) and an evenly spaced sample of the rest, which estimates the density of the
others as all of them would. Up to `limit` trials it changes nothing."""

from __future__ import annotations

import copy
import math
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

DEFAULT_LIMIT = 1000
FINISHED = frozenset(state for state in TrialState if state.is_finished())


def window(
    trials: Sequence[FrozenTrial], limit: int, direction: StudyDirection | None
) -> set[int] | None:
    """The numbers of the finished trials to learn from, about `limit` (None: all of them): the
    best tenth of the limit (single objective) and an even spread of the others."""
    finished = [t for t in trials if t.state in FINISHED]
    if len(finished) <= limit:
        return None
    kept: set[int] = set()
    if direction is not None:
        scored = [(t.values[0], t.number) for t in finished if t.state == TrialState.COMPLETE]
        scored.sort(reverse=direction == StudyDirection.MAXIMIZE)
        kept.update(number for _, number in scored[: limit // 10])
    rest = [t.number for t in finished if t.number not in kept]
    kept.update(rest[:: math.ceil(len(rest) / (limit - len(kept)))])
    return kept


class _WindowedStudy:
    """The study as the sampler sees it, for one trial: the finished trials numbered up to
    `horizon` and not `kept` left out (those after it and the unfinished shown), all else the
    study's own."""

    def __init__(
        self, study: optuna.Study, number: int, kept: set[int] | None, horizon: int
    ) -> None:
        self._study = study
        self._number = number  # the trial's
        self._kept = kept
        self._horizon = horizon
        self._read: dict[Any, list[FrozenTrial]] = {}  # what the sampler asked for this trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        key = (tuple(states) if states is not None else None, use_cache)
        if key not in self._read:
            trials = self._study._get_trials(deepcopy=False, states=states, use_cache=use_cache)
            if self._kept is not None:
                kept, horizon = self._kept, self._horizon
                trials = [t for t in trials if t.number in kept or t.number > horizon
                          or t.state not in FINISHED]  # fmt: skip
            self._read[key] = trials
        return copy.deepcopy(self._read[key]) if deepcopy else self._read[key]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._get_trials()


class BoundedHistory(optuna.samplers.BaseSampler):
    """`sampler`, learning from at most about `limit` finished trials (see the module doc)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, limit: int = DEFAULT_LIMIT) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 10:
            raise ValueError(f"history={limit!r}: give a whole number of trials, 10 or more"
                             " (None: every trial)")  # fmt: skip
        self.sampler = sampler
        self.limit = limit
        self._kept: set[int] | None = None
        self._horizon = -1  # the last trial number the window was chosen over
        self._view: _WindowedStudy | None = None

    def _view_for(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        """The windowed study of this trial. The window is chosen again after each twentieth of
        the limit; the trials in between are all shown."""
        view = self._view
        if view is not None and view._study is study and view._number == trial.number:
            return view
        if trial.number - self._horizon > self.limit // 20:
            trials = study._get_trials(deepcopy=False, use_cache=True)
            direction = None if study._is_multi_objective() else study.direction
            self._kept = window(trials, self.limit, direction)
            self._horizon = trials[-1].number if trials else -1
        self._view = _WindowedStudy(study, trial.number, self._kept, self._horizon)
        return self._view

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._view_for(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._view_for(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(
            self._view_for(study, trial), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def sampler_name(sampler: optuna.samplers.BaseSampler) -> str:
    """The class name of the sampler that suggests (not of this wrapper)."""
    inner = sampler.sampler if isinstance(sampler, BoundedHistory) else sampler
    return type(inner).__name__
