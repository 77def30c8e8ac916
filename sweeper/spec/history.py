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
from dataclasses import dataclass
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


@dataclass
class Window:
    """The finished trials to learn from, chosen over the trials numbered up to `horizon`: the
    `kept` ones, and the numbers of those that were still unfinished then (`pending`)."""

    kept: list[FrozenTrial]  # finished: they do not change
    horizon: int
    pending: list[int]

    @classmethod
    def over(cls, trials: list[FrozenTrial], numbers: set[int]) -> Window:
        horizon = trials[-1].number if trials else -1
        kept = [t for t in trials if t.number in numbers]
        return cls(kept, horizon, [t.number for t in trials if t.state not in FINISHED])

    def shown(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """What the sampler sees of `trials` (all of the study's, by number): the kept ones,
        those still unfinished, and all after the horizon. Found by index, as a study's trials
        are numbered 0, 1, ... without a gap; read one by one where they are not."""
        if not trials or trials[-1].number != len(trials) - 1 or len(trials) <= self.horizon:
            kept = {t.number for t in self.kept}
            return [t for t in trials if t.number > self.horizon or t.state not in FINISHED
                    or t.number in kept]  # fmt: skip
        unfinished = [trials[n] for n in self.pending if trials[n].state not in FINISHED]
        early = sorted(self.kept + unfinished, key=lambda t: t.number) if unfinished else self.kept
        return early + trials[self.horizon + 1 :]


class _WindowedStudy:
    """The study as the sampler sees it, for one trial: past the limit, only the trials its
    `window` shows; all else the study's own. The trials are read once for the trial (Optuna
    sorts all of them at each read)."""

    def __init__(self, study: optuna.Study, number: int, window: Window | None) -> None:
        self._study = study
        self._number = number  # the trial's
        self._window = window
        self._shown: list[FrozenTrial] | None = None  # what the sampler sees for this trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        if self._shown is None:
            trials = self._study._get_trials(deepcopy=False, use_cache=use_cache)
            self._shown = trials if self._window is None else self._window.shown(trials)
        shown = self._shown
        if states is not None:
            shown = [t for t in shown if t.state in states]
        return copy.deepcopy(shown) if deepcopy else shown

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
        self._window: Window | None = None
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
            numbers = window(trials, self.limit, direction)
            self._window = None if numbers is None else Window.over(trials, numbers)
            self._horizon = trials[-1].number if trials else -1
        self._view = _WindowedStudy(study, trial.number, self._window)
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
