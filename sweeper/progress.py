"""What `sweeper launch` shows while it runs, and the table `sweeper status` prints."""

from __future__ import annotations

import sys

import optuna
import pandas as pd
from optuna.trial import TrialState
from tqdm import tqdm


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (surplus claims left out), best first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if (t.datetime_complete and t.datetime_start)
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "seconds": seconds,
                "worker": t.user_attrs.get("worker"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "fail_reason": t.user_attrs.get("fail_reason"),
                **{f"params.{k}": v for k, v in t.params.items()},
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ascending = study.direction == optuna.study.StudyDirection.MINIMIZE
    return table.sort_values("value", ascending=ascending, na_position="last").reset_index(
        drop=True
    )


class Progress:
    """A live bar: finished / budget, with done, pruned, failed, running and the best so far."""

    def __init__(self, study: optuna.Study, budget: int | None, enabled: bool = True) -> None:
        self.study = study
        self.enabled = enabled
        self.bar = tqdm(total=budget, desc=study.study_name, unit="trial", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        self.seen: set[int] = set()

    def update(self) -> None:
        trials = [
            t for t in self.study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")
        ]
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        self.bar.update(finished - self.bar.n)
        best = self._best()
        self.bar.set_postfix(
            done=count[TrialState.COMPLETE],
            pruned=count[TrialState.PRUNED],
            failed=count[TrialState.FAIL],
            running=count[TrialState.RUNNING],
            best=f"{best.value:.4f} (#{best.number})" if best else "-",
        )
        if not self.enabled:  # no terminal: one line per trial that ended
            for t in trials:
                if t.state.is_finished() and t.number not in self.seen:
                    self.seen.add(t.number)
                    value = f"{t.value:.4f}" if t.value is not None else "-"
                    print(f"trial {t.number} {t.state.name} value={value}", flush=True)

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:
            return None

    def close(self) -> None:
        self.update()
        self.bar.close()

    def summary(self) -> None:
        table = trials_table(self.study)
        if table.empty:
            print("no trials ran")
            return
        columns = [c for c in table.columns if c not in ("mlflow_run_id", "fail_reason")]
        print(table[columns].head(10).to_string(index=False))
        best = self._best()
        if best is not None:
            print(f"best: trial {best.number} value={best.value:.4f} params={best.params}")
