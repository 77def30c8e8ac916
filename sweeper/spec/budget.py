"""A study's trial budget: which trials count towards it, and whether a worker may start another.
Workers and the launcher read it off the stored trials, so they agree."""

from __future__ import annotations

from collections import Counter
from enum import Enum

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.records import Attr
from sweeper.spec.stopping import StopRule
from sweeper.stores.storage import RetryingStorage, backend_of


class Budget(Enum):
    RUN = "run"  # a trial may start
    WAIT = "wait"  # others run the last ones; one may yet die and come back to be retried
    DONE = "done"


def counted_trials(
    study: optuna.Study, states: tuple[TrialState, ...] | None = None
) -> list[FrozenTrial]:
    """The trials that count towards the budget: all but surplus claims (a trial that lost the
    race for the last place of the budget to another worker's)."""
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if not t.user_attrs.get(Attr.SURPLUS)]


def budget_state(study: optuna.Study, budget: int | None, stop: StopRule | None = None) -> Budget:
    """Whether a worker may start another trial of `study` under `budget` finished trials (and,
    given a stop rule, while the study still improves)."""
    if stop is not None and stop.reason(study, counted_trials(study)):
        return Budget.DONE
    if budget is None:
        return Budget.RUN
    counts = state_counts(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if finished >= budget:
        return Budget.DONE
    if counts[TrialState.WAITING] or finished + counts[TrialState.RUNNING] < budget:
        return Budget.RUN
    return Budget.WAIT if counts[TrialState.RUNNING] else Budget.DONE


def state_counts(study: optuna.Study) -> Counter[TrialState]:
    """How many of the counted trials are in each state: on sweeper's storage one query, not a
    read of the running trials and a pass through thousands (workers ask before every trial)."""
    backend = backend_of(study._storage)
    if isinstance(backend, RetryingStorage):
        return backend.trial_counts(study._study_id, but=Attr.SURPLUS)
    return Counter(trial.state for trial in counted_trials(study))
