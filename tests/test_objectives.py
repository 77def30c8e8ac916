"""spec.objectives: the metric of single- and multi-objective studies, pick rules, the median
rule of studies scored on cost. In-memory Optuna studies, no training."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweeper.errors import SweeperError
from sweeper.records import Attr
from sweeper.spec.objectives import (
    behind_the_median,
    best_by_metric,
    pick,
    pick_rule,
    ranked,
    within,
)

NAMES = ["val_acc", "params", "latency_ms"]


def scored(rows: list[tuple[float, float, float]]) -> optuna.Study:
    """A study on (val_acc max, params min, latency_ms min) with one complete trial a row."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(NAMES)
    for row in rows:
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=list(row)))
    return study


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("smallest within 1.0", ("params", 1.0)), ("  fastest within .5 ", ("latency_ms", 0.5)),
     ("smallest within 2", ("params", 2.0))],
)  # fmt: skip
def test_pick_rules_parse(rule: str, expected: tuple[str, float]) -> None:
    assert pick_rule(rule, NAMES) == expected


@pytest.mark.parametrize(
    ("rule", "names", "message"),
    [
        ("smallest", NAMES, "say 'smallest within POINTS'"),
        ("biggest within 1", NAMES, "say 'smallest within POINTS'"),
        ("fastest within 1", ["val_acc", "params"], "needs a study scored on latency_ms"),
        ("smallest within 1", ["val_acc"], "add 'params' to the study's objectives"),
    ],
)
def test_bad_pick_rules_say_what_is_accepted(rule: str, names: list[str], message: str) -> None:
    with pytest.raises(SweeperError, match=message):
        pick_rule(rule, names)


def test_pick_takes_the_cheapest_within_the_points_of_the_best() -> None:
    study = scored([(0.700, 9e5, 2.0), (0.695, 3e5, 3.0), (0.688, 1e4, 0.5), (0.650, 1e3, 0.1)])
    assert [t.number for t in within(study, 1.0)] == [0, 1]  # 0.688 is 1.2 points below
    assert pick(study, "smallest within 1.0").number == 1
    assert pick(study, "smallest within 1.5").number == 2
    assert pick(study, "fastest within 1.5").number == 2
    assert pick(study, "smallest within 0").number == 0
    with pytest.raises(SweeperError, match="no complete trial"):
        pick(scored([]), "smallest within 1.0")


def test_the_metric_ranks_in_its_direction() -> None:
    losses = optuna.create_study(direction="minimize")
    for value in (0.9, 0.3, 0.5):
        losses.add_trial(create_trial(state=TrialState.COMPLETE, value=value))
    losses.add_trial(create_trial(state=TrialState.PRUNED))
    assert best_by_metric(losses).number == 1
    assert [t.number for t in ranked(losses.trials[:3], losses)] == [1, 2, 0]
    assert [t.number for t in within(losses, 0.2)] == [1, 2]  # a loss: in its own units
    assert best_by_metric(scored([(0.6, 1, 1), (0.8, 9, 9)])).number == 1
    assert best_by_metric(optuna.create_study()) is None


def test_the_median_rule_of_studies_scored_on_cost() -> None:
    study = scored([])
    for curve in ({"1": 0.3, "2": 0.5}, {"1": 0.2, "2": 0.6}, {"1": 0.4, "2": 0.4}):
        study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={Attr.CURVE: curve}))
    assert behind_the_median(study, number=99, epoch=2, value=0.45)  # median 0.5
    assert not behind_the_median(study, number=99, epoch=2, value=0.55)
    assert not behind_the_median(study, number=99, epoch=1, value=0.0)  # from epoch 2 only
    assert not behind_the_median(study, number=0, epoch=2, value=0.0)  # itself aside: 2 left
