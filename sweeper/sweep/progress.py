"""What `sweeper launch` shows while it runs, and the table `sweeper status` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from sweeper.records import RETRY_OF_SYSTEM_ATTR, Attr
from sweeper.spec.budget import counted_trials
from sweeper.spec.objectives import best_by_metric, maximizing, metric_value

if TYPE_CHECKING:  # pandas loads with the first table: the launcher starts its workers sooner
    import pandas as pd

# trials_dataframe() columns -> the columns of `sweeper status` (params follow as params.NAME)
COLUMNS = {
    "number": "trial", "state": "state", "value": "value",
    f"user_attrs_{Attr.BEST_EPOCH}": "best_epoch", f"user_attrs_{Attr.EPOCHS_RUN}": "epochs_run",
    "duration": "seconds", f"user_attrs_{Attr.WORKER}": "worker",
    f"user_attrs_{Attr.MLFLOW_RUN_ID}": "mlflow_run_id",
    f"system_attrs_{RETRY_OF_SYSTEM_ATTR}": "retry_of",
    f"user_attrs_{Attr.FAIL_REASON}": "fail_reason",
}  # fmt: skip
SURPLUS = f"user_attrs_{Attr.SURPLUS}"
INTERRUPTED = f"user_attrs_{Attr.INTERRUPTED}"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (surplus claims left out), best first."""
    frame = study.trials_dataframe(
        attrs=("number", "state", "value", "duration", "params", "user_attrs", "system_attrs")
    )
    if SURPLUS in frame:
        frame = frame[frame[SURPLUS] != True]  # noqa: E712 (NaN for the others)
    if frame.empty:
        import pandas as pd

        return pd.DataFrame()
    params = {c: f"params.{c.removeprefix('params_')}" for c in frame if c.startswith("params_")}
    # several objectives: the metric is the value, each cost a column of its own
    values = [c for c in frame if c.startswith("values_")]
    costs = {c: c.removeprefix("values_") for c in values[1:]}
    frame = frame.rename(columns={values[0]: "value"}) if values else frame
    if INTERRUPTED in frame:  # failed in Optuna, but their retries resume them
        cut = (frame["state"] == TrialState.FAIL.name) & (frame[INTERRUPTED] == True)  # noqa: E712
        frame.loc[cut, "state"] = "INTERRUPTED"
    table = frame.reindex(columns=[*COLUMNS, *costs, *params])
    table = table.rename(columns={**COLUMNS, **costs, **params})
    table["seconds"] = table["seconds"].dt.total_seconds()
    table = table.astype({"best_epoch": "Int64", "epochs_run": "Int64", "retry_of": "Int64"})
    ascending = not maximizing(study)
    return table.sort_values("value", ascending=ascending, na_position="last", ignore_index=True)


def status_text(study: optuna.Study, fmt: str) -> str:
    """`sweeper status`: the trials table as text, "json" (one object per trial) or "csv"."""
    table = trials_table(study)
    if fmt == "json":
        return table.to_json(orient="records")
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    return table.to_string(index=False, na_rep="") if not table.empty else "no trials yet"


class Progress:
    """A live bar: finished / budget, with done, pruned, failed, interrupted (they resume on the
    next launch), running and the best so far."""

    def __init__(self, study: optuna.Study, budget: int | None, enabled: bool = True) -> None:
        self.study = study
        self.bar = tqdm(total=budget, desc=study.study_name, unit="trial", disable=not enabled,
                        dynamic_ncols=True)  # fmt: skip
        self.seen: set[int] = set()

    def update(self) -> None:
        trials = counted_trials(self.study)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        cut = sum(interrupted(t) for t in trials)
        self.bar.update(count[TrialState.COMPLETE] + count[TrialState.PRUNED] - self.bar.n)
        best = self._best()
        postfix: dict[str, object] = {"done": count[TrialState.COMPLETE],
                                      "pruned": count[TrialState.PRUNED],
                                      "failed": count[TrialState.FAIL] - cut}  # fmt: skip
        if cut:
            postfix["interrupted"] = cut
        running = [t for t in trials if t.state == TrialState.RUNNING]
        postfix["running"] = " ".join(_epoch_of(t) for t in running) or 0
        postfix["best"] = f"{metric_value(best):.4f} (#{best.number})" if best else "-"
        self.bar.set_postfix(postfix)
        if self.bar.disable:  # no terminal: one line per trial that ended
            for t in trials:
                if t.state.is_finished() and t.number not in self.seen:
                    self.seen.add(t.number)
                    value = _values(t, self.study.metric_names)
                    state = "INTERRUPTED" if interrupted(t) else t.state.name
                    print(f"trial {t.number} {state} value={value}", flush=True)

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return best_by_metric(self.study)
        except ValueError:  # a trial finished between the two reads
            return None

    def close(self) -> None:
        self.update()
        self.bar.close()

    def summary(self) -> None:
        table = trials_table(self.study)
        if table.empty:
            print("no trials ran")
            return
        shown = table.drop(columns=["mlflow_run_id", "fail_reason"]).head(10)
        counts = shown.select_dtypes("Int64").columns  # their <NA> is no number: leave it blank
        shown[counts] = shown[counts].astype("string").fillna("")
        print(shown.to_string(index=False, na_rep="", float_format="{:.4g}".format))


def interrupted(trial: FrozenTrial) -> bool:
    """A try cut short by Ctrl-C or SIGTERM: failed in Optuna, but its retry resumes it."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(Attr.INTERRUPTED))


def _values(trial: optuna.trial.FrozenTrial, names: list[str] | None) -> str:
    """0.6786, or with costs: 0.6786 params=2.558e+04 (a multi-objective study's names)."""
    if not trial.values:
        return "-"
    costs = zip((names or [])[1:], trial.values[1:], strict=False)
    return " ".join([f"{trial.values[0]:.4f}", *(f"{name}={v:.4g}" for name, v in costs)])


def _epoch_of(trial: optuna.trial.FrozenTrial) -> str:
    """A running trial as #3:2/5 (its number, the epochs it reported, of its budget)."""
    epochs = trial.user_attrs.get(Attr.CONFIG, {}).get("epochs", "?")
    return f"#{trial.number}:{max(trial.intermediate_values, default=0)}/{epochs}"
