"""spec.budget and spec.stopping on in-memory Optuna studies: which trials count, whether a worker
may start another, and when a study stops paying. No training, no processes."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweeper.records import Attr
from sweeper.spec.budget import Budget, budget_state, counted_trials, state_counts
from sweeper.spec.stopping import StopRule
from sweeper.stores.storage import make_storage

T0 = datetime.datetime(2026, 1, 1)


def study_of(
    *states: TrialState, surplus: int = 0, direction: str = "maximize", storage: Any = None
) -> optuna.Study:
    """A study holding one trial per state given, then `surplus` failed surplus claims."""
    study = optuna.create_study(direction=direction, storage=storage)
    for state in states:
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value))
    for _ in range(surplus):
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.SURPLUS: True}))
    return study


def finished(values: list[float | None], direction: str = "maximize") -> optuna.Study:
    """Trials finished one a minute in this order: a value is COMPLETE, None is PRUNED."""
    study = optuna.create_study(direction=direction)
    for i, value in enumerate(values):
        when = T0 + datetime.timedelta(minutes=i)
        state = TrialState.PRUNED if value is None else TrialState.COMPLETE
        trial = create_trial(state=state, value=value)
        trial.datetime_start, trial.datetime_complete = when, when
        study.add_trial(trial)
    return study


C, P, F, R, W = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                 TrialState.WAITING)  # fmt: skip


@pytest.mark.parametrize(
    ("states", "budget", "expected"),
    [
        ((), 3, Budget.RUN),
        ((C, P), 3, Budget.RUN),  # one place left
        ((C, P, C), 3, Budget.DONE),  # complete and pruned both count
        ((C, P, F), 3, Budget.RUN),  # a failed trial does not
        ((C, P, R), 3, Budget.WAIT),  # the last place is taken, but it may die and come back
        ((C, P, R, W), 3, Budget.RUN),  # a queued retry is work to claim
        ((C, C, C, R), 3, Budget.DONE),
        ((F, F), 1, Budget.RUN),
        ((C, P, F, R), None, Budget.RUN),  # no trial budget: a timeout ends it
    ],
)
def test_budget_state(
    states: tuple[TrialState, ...], budget: int | None, expected: Budget, tmp_path: Path
) -> None:
    assert budget_state(study_of(*states), budget) == expected
    # on sweeper's storage the states are counted by one query (RetryingStorage.trial_counts)
    stored = study_of(*states, surplus=2, storage=make_storage(f"sqlite:///{tmp_path}/o.db"))
    assert budget_state(stored, budget) == expected


def test_surplus_claims_do_not_count_and_are_left_out(tmp_path: Path) -> None:
    study = study_of(C, P, surplus=2)
    assert len(counted_trials(study)) == 2
    assert counted_trials(study, (TrialState.FAIL,)) == []
    assert budget_state(study, 3) == Budget.RUN
    stored = study_of(C, P, W, surplus=2, storage=make_storage(f"sqlite:///{tmp_path}/o.db"))
    assert state_counts(stored) == {C: 1, P: 1, W: 1}
    assert state_counts(stored) == Counter(t.state for t in counted_trials(stored))


def test_a_stop_rule_ends_the_budget_early() -> None:
    study = finished([0.5, 0.6, 0.55, None, 0.58])
    assert budget_state(study, 100) == Budget.RUN
    assert budget_state(study, 100, StopRule(after=3)) == Budget.DONE
    assert budget_state(study, 100, StopRule(after=4)) == Budget.RUN


def test_the_stop_rule_counts_finished_trials_in_the_order_they_ended() -> None:
    rule = StopRule(after=2)
    assert rule.reason(*_with_trials(finished([0.5, 0.4]))) is None  # one without an improvement
    reason = rule.reason(*_with_trials(finished([0.5, 0.4, None])))  # pruned: no improvement
    assert reason is not None and "2 finished trials in a row" in reason and "trial 0" in reason
    assert rule.reason(*_with_trials(finished([0.5, 0.4, 0.7]))) is None  # 0.7 reset the count


def test_min_delta_and_direction() -> None:
    small_gains = finished([0.50, 0.505, 0.509])
    assert StopRule(after=2, min_delta=0.01).reason(*_with_trials(small_gains)) is not None
    assert StopRule(after=2).reason(*_with_trials(small_gains)) is None
    losses = finished([1.0, 0.9, 1.1, 1.2], direction="minimize")
    assert StopRule(after=2).reason(*_with_trials(losses)) is not None
    assert StopRule(after=3).reason(*_with_trials(losses)) is None


def test_no_complete_trial_never_stops() -> None:
    assert StopRule(after=1).reason(*_with_trials(finished([None, None, None]))) is None


def _with_trials(study: optuna.Study) -> tuple[optuna.Study, list]:
    return study, counted_trials(study)


def test_a_claim_past_the_budget_is_surplus_and_one_below_it_reads_nothing() -> None:
    from sweeper.worker.objective import Objective, SurplusTrial

    objective = Objective(spec=None, checkpoint_dir=Path(), tracker=None, worker="w",
                          device="cpu", budget=2)  # fmt: skip
    study = study_of(TrialState.COMPLETE, TrialState.FAIL)  # numbers 0 and 1
    reads = []
    real = study.get_trials
    study.get_trials = lambda *a, **k: reads.append(1) or real(*a, **k)
    objective._check_budget(study.ask())  # number 2, one counted trial before it: room
    assert reads == [1]
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))  # number 3
    late = study.ask()  # number 4: two counted trials before it (0 and 3) fill the budget
    with pytest.raises(SurplusTrial):
        objective._check_budget(late)
    assert late.user_attrs[Attr.SURPLUS] is True
    reads.clear()
    fresh = study_of()
    fresh.get_trials = lambda *a, **k: reads.append(1) or real(*a, **k)
    objective._check_budget(fresh.ask())  # number 0 < budget 2: nothing to read
    assert reads == []
