"""What a study optimizes: its metric, and for accuracy-against-cost studies the costs beside it.

A study's first objective is always its metric (val_acc or val_loss); costs are minimized:
`params` (the model's parameter count), `latency_ms` (per image at batch 1 on the trial's
device, after warm-up) and `train_seconds` (the epochs' training time). With costs the Optuna
study is multi-objective: the helpers here give every reader one way to the metric's value.
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.records import Attr

COSTS = ("params", "latency_ms", "train_seconds")
STARTUP_TRIALS = 3  # the median rule on the first objective waits for this many finished trials


def metric_value(trial: FrozenTrial) -> float | None:
    """The trial's value of the study's metric (its first objective); None if it has none."""
    return trial.values[0] if trial.values else None


def maximizing(study: optuna.Study) -> bool:
    return study.directions[0] == StudyDirection.MAXIMIZE


def best_by_metric(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the best metric value (in a multi-objective study too)."""
    return best_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study)


def best_of(trials: list[FrozenTrial], study: optuna.Study) -> FrozenTrial | None:
    """ranked(trials, study)[0] in one pass (a launcher's poll of thousands sorts none)."""
    if not trials:
        return None
    return (max if maximizing(study) else min)(trials, key=metric_value)


def ranked(trials: list[FrozenTrial], study: optuna.Study) -> list[FrozenTrial]:
    """Trials from the best metric value to the worst."""
    return best_first(trials, maximizing(study))


def best_first(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """Trials with a metric value, the best first; ties keep their order (by number)."""
    return sorted(trials, key=metric_value, reverse=maximize)


def behind_the_median(study: optuna.Study, number: int, epoch: int, value: float) -> bool:
    """Optuna's median rule on the first objective, for multi-objective studies, whose trials
    cannot report() (Optuna prunes single-objective studies only): prune when `value` at `epoch`
    is worse than the median of the finished trials' values at that epoch (user attr `curve`)."""
    seen = [
        t.user_attrs[Attr.CURVE][str(epoch)]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.number != number and str(epoch) in t.user_attrs.get(Attr.CURVE, {})
    ]
    if len(seen) < STARTUP_TRIALS or epoch < 2:
        return False
    median = statistics.median(seen)
    return value < median if maximizing(study) else value > median


def measure_costs(model: Any, device: Any, shape: tuple[int, int, int], history: list[dict],
                  names: list[str]) -> dict[str, float]:  # fmt: skip
    """The costs a study asks for, of a trained model."""
    costs = {}
    if "params" in names:
        costs["params"] = float(sum(p.numel() for p in model.parameters()))
    if "train_seconds" in names:
        costs["train_seconds"] = float(sum(row.get("seconds", 0.0) for row in history))
    if "latency_ms" in names:
        costs["latency_ms"] = latency_ms(model, device, shape, batch=1)
        costs["latency_ms_batch256"] = latency_ms(model, device, shape, batch=256)
    return costs


def latency_ms(model: Any, device: Any, shape: tuple[int, int, int], batch: int) -> float:
    """Milliseconds per image of the model in eval mode at `batch`, after 3 warm-up calls."""
    import torch

    x = torch.randn(batch, *shape, device=device)
    model.eval()
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs, started = 0, time.perf_counter()
        while runs < 5 or time.perf_counter() - started < 0.2:
            model(x)
            runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - started) / runs / batch


PICKS = {"smallest": "params", "fastest": "latency_ms"}


def pick_rule(rule: str, names: list[str]) -> tuple[str, float]:
    """("params" or "latency_ms", points) of a rule such as "smallest within 1.0"; one line that
    says what is accepted if the rule or the study does not allow it."""
    match = re.fullmatch(r"\s*(smallest|fastest)\s+within\s+([0-9]*\.?[0-9]+)\s*", rule)
    if match is None:
        raise SweeperError(
            f"--pick {rule!r}: say 'smallest within POINTS' or 'fastest within POINTS' (POINTS of"
            " validation accuracy below the best, e.g. 'smallest within 1.0')"
        )
    cost = PICKS[match.group(1)]
    if cost not in names[1:]:
        raise SweeperError(
            f"--pick {rule!r} needs a study scored on {cost}; its objectives are {names}"
            f" (add {cost!r} to the study's objectives)"
        )
    return cost, float(match.group(2))


def within(study: optuna.Study, points: float) -> list[FrozenTrial]:
    """The complete trials whose metric is within `points` of the best (accuracy in percentage
    points; a loss in its own units), best first."""
    done = ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study)
    if not done:
        return []
    margin = points / 100 if maximizing(study) else points
    best = metric_value(done[0])
    return [t for t in done if abs(metric_value(t) - best) <= margin + 1e-12]


def pick(study: optuna.Study, rule: str) -> FrozenTrial:
    """The trial a pick rule names: the cheapest of those within the points of the best."""
    names = study.metric_names or []
    cost, points = pick_rule(rule, names)
    candidates = within(study, points)
    if not candidates:
        raise SweeperError(f"--pick: study '{study.study_name}' has no complete trial yet")
    index = names.index(cost)
    return min(candidates, key=lambda t: t.values[index])  # ties: the better metric (first)
