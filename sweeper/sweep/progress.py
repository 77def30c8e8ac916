"""What `sweeper launch` shows while it runs, and the table `sweeper status` prints."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm  # a notebook (sweeper.run_study) gets its own bar

from sweeper.records import RETRY_OF_SYSTEM_ATTR, Attr
from sweeper.spec.budget import counted_trials
from sweeper.spec.objectives import best_of, maximizing, metric_value
from sweeper.stores.storage import IndexedTrial, backend_of

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
HINT_AFTER_S = 3 * 3600  # a sweep that would take longer here says how to make it shorter


def trials_table(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> pd.DataFrame:
    """One row per trial (surplus claims left out), best first: of all the study's trials, or
    of those given."""
    frame = trials_frame(study, study.get_trials(deepcopy=False) if trials is None else trials)
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
    return table.sort_values(
        "value", ascending=ascending, na_position="last", ignore_index=True, kind="stable"
    )  # ties in trial order, as `status` ranks them


def trials_frame(study: optuna.Study, trials: list[FrozenTrial]) -> pd.DataFrame:
    """Optuna's trials_dataframe() columns (number, state, value or values_NAME, duration,
    params_, user_attrs_, system_attrs_) of the trials given, not necessarily all of them."""
    import pandas as pd

    names = study.metric_names or [str(i) for i in range(len(study.directions))]
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        values = trial.values or [None] * len(names)
        if len(names) == 1:
            row["value"] = values[0]
        else:
            row.update({f"values_{name}": v for name, v in zip(names, values, strict=True)})
        complete, start = trial.datetime_complete, trial.datetime_start
        row["duration"] = complete - start if complete and start else pd.NaT
        for prefix, attrs in (("params", trial.params), ("user_attrs", trial.user_attrs),
                              ("system_attrs", trial.system_attrs)):  # fmt: skip
            row.update({f"{prefix}_{key}": value for key, value in attrs.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "duration" in frame:
        frame["duration"] = pd.to_timedelta(frame["duration"])
    return frame


def status_text(study: optuna.Study, fmt: str, top: int = 0) -> str:
    """`sweeper status`: the trials table as text (its `top` rows, best first, and the counts
    of all, where there are more), "json" (one object per trial) or "csv"."""
    if fmt == "text" and top > 0:
        return _top_text(study, _trial_index(study), top)
    table = trials_table(study)
    if fmt == "json":
        return table.to_json(orient="records")
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    if table.empty:
        return "no trials yet"
    return table.to_string(index=False, na_rep="")


def _trial_index(study: optuna.Study) -> list[IndexedTrial]:
    """The study's trials in three columns each (RetryingStorage.trial_index), surplus claims
    left out; from a storage that cannot (a proxy's client), from all its trials read whole."""
    flags = (Attr.SURPLUS, Attr.INTERRUPTED)
    backend = backend_of(study._storage)
    if hasattr(backend, "trial_index"):
        index = backend.trial_index(study._study_id, flags)
    else:
        index = [IndexedTrial(t._trial_id, t.number, t.state, t.values[0] if t.values else None,
                              frozenset(f for f in flags if t.user_attrs.get(f) is True))
                 for t in study.get_trials(deepcopy=False)]  # fmt: skip
    return [t for t in index if Attr.SURPLUS not in t.flags]


def _top_text(study: optuna.Study, index: list[IndexedTrial], top: int) -> str:
    """The best `top` trials in full, read one by one, and the counts of all by state."""
    if not index:
        return "no trials yet"
    sign = -1 if maximizing(study) else 1
    ranked = sorted(index, key=lambda t: (t.value is None, sign * (t.value or 0), t.number))
    trials = [study._storage.get_trial(t.trial_id) for t in ranked[:top]]
    shown = trials_table(study, trials).to_string(index=False, na_rep="")
    if len(index) <= top:
        return shown
    cut = TrialState.FAIL  # failed in Optuna, but their retries resume them
    counts = Counter("INTERRUPTED" if t.state == cut and Attr.INTERRUPTED in t.flags
                     else t.state.name for t in index)  # fmt: skip
    states = ", ".join(f"{n} {state.lower()}" for state, n in counts.most_common())
    return (f"{shown}\n... the best {top} of {len(index)} trials ({states}); --top 0 shows all,"
            " --csv or --json every row")  # fmt: skip


class Progress:
    """A live bar: finished / budget, with done, pruned, failed, interrupted (they resume on the
    next launch), the running trials with their pace, the time left and the best so far."""

    def __init__(self, study: optuna.Study, budget: int | None, enabled: bool = True) -> None:
        self.study = study
        self.bar = tqdm(total=budget, desc=study.study_name, unit="trial", disable=not enabled,
                        dynamic_ncols=True)  # fmt: skip
        self.trials: list[FrozenTrial] = []  # as the last update read them
        self.seen: set[int] = set()
        self.paced: set[int] = set()  # running trials whose pace has been said (no terminal)
        self.hinted = False

    def update(self) -> None:
        """One read of the study's trials a poll; the figure drawer shares it (`trials`)."""
        self.trials = trials = counted_trials(self.study)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        cut = sum(interrupted(t) for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        self.bar.update(finished - self.bar.n)
        best = best_of([t for t in trials if t.state == TrialState.COMPLETE], self.study)
        left = time_left(running, self.bar.total and self.bar.total - finished - len(running))
        postfix: dict[str, object] = {"done": count[TrialState.COMPLETE],
                                      "pruned": count[TrialState.PRUNED],
                                      "failed": count[TrialState.FAIL] - cut}  # fmt: skip
        if cut:
            postfix["interrupted"] = cut
        postfix["running"] = " ".join(_running(t) for t in running) or 0
        if left is not None:
            postfix["left"] = f"~{duration(left, short=True)}"
        postfix["best"] = f"{metric_value(best):.4f} (#{best.number})" if best else "-"
        self.bar.set_postfix(postfix)
        self._say_pace(running, left)
        if self.bar.disable:  # no terminal: one line per trial that ended
            ended = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
            names = self.study.metric_names if ended else None  # a read of the storage
            for t in ended:
                self.seen.add(t.number)
                value = _values(t, names)
                state = "INTERRUPTED" if interrupted(t) else t.state.name
                print(f"trial {t.number} {state} value={value}", flush=True)

    def _say_pace(self, running: list[FrozenTrial], left: float | None) -> None:
        """Once a trial's pace is known: without a terminal, one line for it; and once a
        launch, a hint where what is left would take more than a few hours here."""
        paced = [t for t in running if t.user_attrs.get(Attr.PACE)]
        if self.bar.disable:
            for t in paced:
                if t.number not in self.paced:
                    self.paced.add(t.number)
                    print(f"trial {t.number} pace: {pace_text(t)}", flush=True)
        if paced and not self.hinted:
            slowest = max(paced, key=trial_seconds)
            whole = left if left is not None else trial_seconds(slowest)
            if whole > HINT_AFTER_S:
                self.hinted = True
                tqdm.write(long_sweep_hint(slowest, whole, self.bar.total, len(running)))

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


def epochs_of(trial: FrozenTrial) -> tuple[int, int | None]:
    """The epochs a trial has reported (a multi-objective trial keeps them as its curve) and
    its epoch budget (None if not known yet)."""
    curve = [int(epoch) for epoch in trial.user_attrs.get(Attr.CURVE, {})]
    done = max([*trial.intermediate_values, *curve], default=0)
    return done, trial.user_attrs.get(Attr.CONFIG, {}).get("epochs")


def trial_seconds(trial: FrozenTrial) -> float:
    """A paced trial's whole training at its pace (before early stopping or pruning)."""
    return trial.user_attrs[Attr.PACE]["epoch_s"] * (epochs_of(trial)[1] or 1)


def time_left(running: list[FrozenTrial], to_start: int | None) -> float | None:
    """Seconds until the running trials and the `to_start` others of the budget are trained, at
    the pace of the running ones (as long as no trial stops early); None before a pace is
    known or without a trial budget."""
    paced = [t for t in running if t.user_attrs.get(Attr.PACE)]
    if not paced or to_start is None:
        return None
    mean = sum(trial_seconds(t) for t in paced) / len(paced)
    left = 0.0
    for t in running:
        done, epochs = epochs_of(t)
        pace = t.user_attrs.get(Attr.PACE)
        left += pace["epoch_s"] * max((epochs or 1) - done, 0) if pace else mean
    return (left + max(to_start, 0) * mean) / len(running)


def pace_text(trial: FrozenTrial) -> str:
    """312 images/s on cpu, 2 min 24 s an epoch, 1 h 36 min for 40 epochs"""
    pace = trial.user_attrs[Attr.PACE]
    epochs = epochs_of(trial)[1] or 1
    return (f"{pace['images_per_s']:.0f} images/s on {pace.get('device', '?')},"
            f" {duration(pace['epoch_s'])} an epoch, {duration(trial_seconds(trial))}"
            f" for {epochs} epochs")  # fmt: skip


def long_sweep_hint(trial: FrozenTrial, left: float, budget: int | None, workers: int) -> str:
    """One line: how long the sweep would take here, and the levers that shorten it."""
    workers_text = f"{workers} worker{'s' * (workers > 1)}"
    rest = f"; its {budget} trials need about {duration(left)} more on {workers_text}"
    return (f"sweeper: note: trial {trial.number} trains at {pace_text(trial)}"
            f"{rest if budget else ''} here. For a first look: fewer --epochs, a smaller"
            " --train-size, fewer --trials, or a GPU")  # fmt: skip


def duration(seconds: float, short: bool = False) -> str:
    """1 h 36 min, 2 min 24 s, 45 s (short: 1h36m, 2m24s, 45s); hours past a day stay hours."""
    whole = round(seconds)
    parts = [(whole // 3600, "h"), (whole % 3600 // 60, "min"), (whole % 60, "s")]
    shown = [(n, unit) for n, unit in parts if n][:2] if whole else [(0, "s")]
    if whole >= 3600:
        shown = [(n, unit) for n, unit in shown if unit != "s"]
    if short:
        return "".join(f"{n}{unit[0]}" for n, unit in shown)
    return " ".join(f"{n} {unit}" for n, unit in shown)


def _values(trial: optuna.trial.FrozenTrial, names: list[str] | None) -> str:
    """0.6786, or with costs: 0.6786 params=2.558e+04 (a multi-objective study's names)."""
    if not trial.values:
        return "-"
    costs = zip((names or [])[1:], trial.values[1:], strict=False)
    return " ".join([f"{trial.values[0]:.4f}", *(f"{name}={v:.4g}" for name, v in costs)])


def _running(trial: FrozenTrial) -> str:
    """A running trial as #3:2/5 (its number, the epochs it reported, of its budget), with its
    pace once known: #3:0/40@312img/s,2m24s/ep."""
    done, epochs = epochs_of(trial)
    shown = f"#{trial.number}:{done}/{epochs or '?'}"
    if pace := trial.user_attrs.get(Attr.PACE):
        epoch = duration(pace["epoch_s"], short=True)
        shown += f"@{pace['images_per_s']:.0f}img/s,{epoch}/ep"
    return shown
