"""Stop when it stops paying: a study ends once N finished trials in a row have not raised its
best value. Every worker and the launcher read it off the stored trials, so they agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.spec.objectives import maximizing, metric_value


@dataclass(frozen=True)
class StopRule:
    after: int  # finished trials in a row without an improvement
    min_delta: float = 0.0  # an improvement raises the best value by more than this

    def reason(self, study: optuna.Study, trials: list[FrozenTrial]) -> str | None:
        """Why the study should stop now, or None while it still pays."""
        finished = sorted(
            (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
            key=lambda t: t.datetime_complete or datetime.max,
        )
        sign = 1 if maximizing(study) else -1
        best: FrozenTrial | None = None
        since = 0
        for trial in finished:
            if trial.state == TrialState.COMPLETE and (
                best is None or sign * (metric_value(trial) - metric_value(best)) > self.min_delta
            ):
                best, since = trial, 0
            else:
                since += 1
        if best is None or since < self.after:
            return None
        return (f"stop_after: {since} finished trials in a row did not raise the best value"
                f" ({metric_value(best):.4f}, trial {best.number}) by more than"
                f" {self.min_delta:g}")  # fmt: skip
