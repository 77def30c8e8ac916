"""What a dashboard reads: a study's trials and its MLflow runs, collected once as DataFrames."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from sweeper.records import RETRY_OF_SYSTEM_ATTR, Attr, Kind, Tag
from sweeper.spec.budget import counted_trials
from sweeper.spec.objectives import best_first, maximizing, metric_value
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage

CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "seconds")
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the others ignore the momentum setting
CONFIG_COLUMNS = ("device", "batch_size", "activation", "init", "optimizer", "lr", "weight_decay")
SETTINGS = ("trial", "state", "setting", "model", "gpu", "device", "batch_size", "activation",
            "init", "optimizer", "lr", "momentum", "weight_decay", "lr_decay", "train_minutes",
            "best_epoch", "epochs_run", "val_acc", "value", "other", "status", "fail_reason",
            "retry_of", "worker", "start", "end", "mlflow_run", "run_id")  # fmt: skip
SHOWN = {*CONFIG_COLUMNS, "model", "momentum", "schedule", "milestones", "gamma"}  # own columns
RUN_TRIAL, RUN_DEVICE = f"tags.{Tag.TRIAL}", f"tags.{Tag.DEVICE}"
RUN_KEYS = ["run_id", "experiment_id", RUN_TRIAL, RUN_DEVICE, "metrics.best_epoch",
            "metrics.best_val_acc", "metrics.seconds"]  # fmt: skip
# Past this many trials, the curves of the best ones and of the running ones only: MLflow has no
# bulk read of metric histories (a call per run and metric), and no page draws thousands.
CURVES_READ = 50


@dataclass
class StudyData:
    """Everything a dashboard may show, read once from the Optuna storage and MLflow. Runs are
    rows as sweeper.tracking returns them (run_id, status, metrics.<key>, tags.<key>, ...)."""

    name: str
    study: optuna.Study  # for optuna.visualization
    trials: list[FrozenTrial]  # by number; surplus claims left out
    settings: pd.DataFrame  # one row per trial, the columns of SETTINGS
    # one row per trial and epoch: the MLflow runs' per-epoch metrics (past CURVES_READ trials,
    # of the best CURVES_READ and the running ones)
    curves: pd.DataFrame
    launch: pd.Series | None  # the latest launch run (the report is logged there)
    ensemble: pd.Series | None  # the latest ensemble run
    members: pd.DataFrame | None  # that run's ensemble_members.json table
    collected: datetime

    @property
    def metric(self) -> str:
        return "val_acc" if self.maximize else "val_loss"

    @property
    def maximize(self) -> bool:
        return maximizing(self.study)

    @property
    def target(self) -> Any:
        """What optuna.visualization plots of a multi-objective study: its metric (None: the
        single objective)."""
        return metric_value if len(self.study.directions) > 1 else None

    def count(self, state: str) -> int:
        return int((self.settings["state"] == state).sum())

    @property
    def running(self) -> bool:
        """Trials still run, or the launch has not ended (as the stores say now)."""
        launch_running = self.launch is not None and self.launch["status"] == "RUNNING"
        return launch_running or self.count("RUNNING") > 0

    def best(self) -> pd.Series | None:
        """The settings row of the best complete trial."""
        done = self.settings[self.settings["state"] == "COMPLETE"]
        if done.empty:
            return None
        return done.loc[done["value"].idxmax() if self.maximize else done["value"].idxmin()]


def collect(
    name: str, paths: SweepPaths, mlflow_url: str, study: optuna.Study | None = None
) -> StudyData:
    """Read the study (unless given, as a launcher holds it: its finished trials are not read
    again), its trial runs and their metric histories, and the ensemble run."""
    from sweeper.stores.tracking import queries  # loaded on demand: the CLI stays quick

    if study is None:
        study = load_stored_study(name, make_storage(paths.storage_url), paths.storage_url)
    trials = counted_trials(study)
    uri = paths.tracking_uri
    if len(trials) <= CURVES_READ:
        runs = queries.runs_of_study(uri, name)
    else:
        runs = _few_runs(uri, study, trials)
    read = _curves_to_read(trials, runs, maximizing(study))
    curves = _curves(trials, runs, queries.metric_histories(uri, read, CURVE_METRICS))
    ensemble = queries.latest_run(uri, name, Kind.ENSEMBLE)
    return StudyData(
        name=name,
        study=study,
        trials=trials,
        settings=_settings(trials, runs, curves, mlflow_url.rstrip("/")),
        curves=curves,
        launch=queries.latest_run(uri, name, Kind.LAUNCH),
        ensemble=ensemble,
        members=None if ensemble is None else queries.ensemble_table(uri, ensemble["run_id"]),
        collected=datetime.now(),
    )


def _few_runs(uri: str, study: optuna.Study, trials: list[FrozenTrial]) -> pd.DataFrame:
    """Past CURVES_READ trials, the runs of the best and of the running trials as MLflow has
    them; the others' columns (RUN_KEYS) from their trials, so that a study of thousands of
    trials reads tens of runs. Their val_acc is their metric's (or its best epoch's, pruned)
    where the metric is val_acc, their seconds an epoch their wall time over their epochs."""
    from sweeper.stores.tracking import queries

    named = {t.number: t.user_attrs[Attr.MLFLOW_RUN_ID] for t in trials
             if Attr.MLFLOW_RUN_ID in t.user_attrs}  # fmt: skip
    wanted = _wanted(trials, maximizing(study))
    runs, experiment = queries.runs_by_id(uri, study.study_name, sorted(
        {named[n] for n in wanted if n in named}))  # fmt: skip
    accuracy = (study.metric_names or ["val_acc"])[0] == "val_acc"
    read, others = set(runs["run_id"]), {}  # run id -> its row: a retry's, past its first try's
    for t in trials:
        if t.number in named and named[t.number] not in read:
            others[named[t.number]] = _run_row(t, experiment, accuracy)
    return pd.concat([runs, pd.DataFrame(list(others.values()), columns=RUN_KEYS)],
                     ignore_index=True)  # fmt: skip


def _run_row(t: FrozenTrial, experiment: str | None, accuracy: bool) -> dict[str, Any]:
    """The RUN_KEYS of a trial's run, from the trial (see _few_runs)."""
    best = metric_value(t) if t.state.name == "COMPLETE" else None
    if t.state.name == "PRUNED" and t.intermediate_values:
        best = max(t.intermediate_values.values())
    epochs = t.user_attrs.get(Attr.EPOCHS_RUN)
    seconds = t.duration.total_seconds() / epochs if t.duration and epochs else None
    return {
        "run_id": t.user_attrs[Attr.MLFLOW_RUN_ID],
        "experiment_id": experiment,
        RUN_TRIAL: str(t.number),
        RUN_DEVICE: t.user_attrs.get(Attr.CONFIG, {}).get("device", ""),
        "metrics.best_epoch": t.user_attrs.get(Attr.BEST_EPOCH),
        "metrics.best_val_acc": best if accuracy else None,
        "metrics.seconds": seconds,
    }


def _wanted(trials: list[FrozenTrial], maximize: bool) -> set[int]:
    """The numbers of the best CURVES_READ finished trials (ties by number) and the running."""
    scored = best_first([t for t in trials if metric_value(t) is not None], maximize)
    wanted = {t.number for t in scored[:CURVES_READ]}
    return wanted | {t.number for t in trials if t.state.name == "RUNNING"}


def _curves_to_read(trials: list[FrozenTrial], runs: pd.DataFrame, maximize: bool) -> list[str]:
    """The runs whose metric histories the report reads: all, or past CURVES_READ trials those
    of the best CURVES_READ (by the metric, finished) and of the running trials."""
    if len(trials) <= CURVES_READ or runs.empty:
        return list(runs["run_id"])
    wanted = {str(number) for number in _wanted(trials, maximize)}  # ties by number, as the table
    return list(runs.loc[runs[RUN_TRIAL].isin(wanted), "run_id"])


def _curves(trials: list[FrozenTrial], runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per trial and epoch: the per-epoch metrics of each trial's own run. A run that a
    retry continued is the retry's: its tag sweeper.trial names the trial it counts for."""
    labels = {t.number: _label(t) for t in trials}
    owners = runs.reindex(columns=RUN_KEYS).set_index("run_id")[RUN_TRIAL].astype(int)
    owners = owners[owners.isin(labels)]
    points = histories[histories["run_id"].isin(owners.index)]
    frame = points.pivot(index=["run_id", "step"], columns="key", values="value").reset_index()
    frame = frame.rename_axis(columns=None).reindex(columns=["run_id", "step", *CURVE_METRICS])
    frame.insert(0, "trial", frame.pop("run_id").map(owners))
    frame.insert(1, "setting", frame["trial"].map(labels))
    return frame.sort_values(["trial", "step"], ignore_index=True).rename(columns={"step": "epoch"})


def _settings(
    trials: list[FrozenTrial], runs: pd.DataFrame, curves: pd.DataFrame, mlflow_url: str
) -> pd.DataFrame:
    """One row per trial: its setting, state and times from Optuna, its device and link from the
    run it names (user attr mlflow_run_id), its metrics only from its own run (see _curves)."""
    frame = pd.DataFrame([_setting(t) for t in trials], columns=list(SETTINGS))
    run = runs.set_index("run_id", drop=False).reindex(index=frame["run_id"], columns=RUN_KEYS)
    run = run.set_axis(frame.index)  # the run each trial names; NaN where there is none
    linked = run["run_id"].notna()
    own = run[RUN_TRIAL] == frame["trial"].astype(str)
    frame["device"] = run[RUN_DEVICE].fillna("").where(linked, frame["device"])
    frame["gpu"] = (
        frame["device"].astype(str).str.startswith("cuda").map({True: "yes", False: "no"})
    )
    frame["best_epoch"] = run["metrics.best_epoch"].where(own & (run["metrics.best_epoch"] > 0))
    frame["val_acc"] = run["metrics.best_val_acc"].where(own)
    frame["mlflow_run"] = run_url(mlflow_url, run).fillna("")
    frame["run_id"] = run["run_id"].fillna("")
    epochs = curves.dropna(subset=["val_acc"]).groupby("trial")["epoch"].max()
    frame["epochs_run"] = frame["trial"].map(epochs).fillna(frame["epochs_run"])
    seconds = curves.groupby("trial")["seconds"].sum(min_count=1)
    unread = run["metrics.seconds"].where(own) * frame["epochs_run"]  # its last epoch's pace
    frame["train_minutes"] = frame["trial"].map(seconds).fillna(unread) / 60
    counts = ["batch_size", "best_epoch", "epochs_run", "retry_of"]
    return frame.astype(dict.fromkeys(counts, "Int64"))


def _setting(t: FrozenTrial) -> dict[str, Any]:
    """What Optuna holds of a trial's row (the rest comes from MLflow)."""
    config = t.user_attrs.get(Attr.CONFIG, {})
    momentum = config.get("optimizer") in MOMENTUM_OPTIMIZERS
    return {
        **{key: config.get(key) for key in CONFIG_COLUMNS},
        "trial": t.number,
        "state": t.state.name,
        "setting": _label(t),
        "model": _model(config),
        "momentum": config.get("momentum") if momentum else None,
        "lr_decay": _lr_decay(config),
        "value": metric_value(t),
        "other": ", ".join(f"{k}={_short(v)}" for k, v in t.params.items() if k not in SHOWN),
        "status": t.user_attrs.get(Attr.TRAIN_STATUS, ""),
        "fail_reason": _fail_reason(t),
        "retry_of": t.system_attrs.get(RETRY_OF_SYSTEM_ATTR),
        "worker": t.user_attrs.get(Attr.WORKER, ""),
        "start": t.datetime_start,
        "end": t.datetime_complete,
        "run_id": t.user_attrs.get(Attr.MLFLOW_RUN_ID, ""),
        "epochs_run": t.user_attrs.get(Attr.EPOCHS_RUN, float("nan")),  # its curve's if read
    }


def _label(t: FrozenTrial) -> str:
    """A setting's short name: trial number, model, optimizer and the suggested values."""
    config = t.user_attrs.get(Attr.CONFIG, {})
    model = str(config.get("model", "")).rpartition(":")[2]  # your own builder: its name
    parts = [f"#{t.number}", model, str(config.get("optimizer", ""))]
    parts += [f"{k}={_short(v)}" for k, v in t.params.items() if k not in ("model", "optimizer")]
    return " ".join(p for p in parts if p)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fail_reason(trial: FrozenTrial) -> str:
    if trial.state.name != "FAIL":
        return ""
    if Attr.INTERRUPTED in trial.user_attrs:
        return "interrupted by Ctrl-C or SIGTERM"
    return trial.user_attrs.get(Attr.FAIL_REASON, "no heartbeat: its worker died")


def _model(config: dict[str, Any]) -> str:
    model = str(config.get("model", "")).rpartition(":")[2]  # your own builder: its name
    extras = ["bn"] if config.get("batch_norm") else []
    if config.get("dropout"):
        extras.append(f"dropout {config['dropout']:g}")
    if config.get("pretrained"):
        extras.append("pretrained")
    return f"{model} ({', '.join(extras)})" if extras else model


def _lr_decay(config: dict[str, Any]) -> str:
    schedule = config.get("schedule", "")
    if schedule == "step":
        at = ", ".join(f"{m:g}" for m in config.get("milestones", []))
        schedule = f"step x{config.get('gamma', 0.1):g} at {at} of the epochs"
    if config.get("warmup_epochs"):
        schedule += f", warmup {config['warmup_epochs']:g} epochs"
    return schedule


def run_url(mlflow_url: str, run: Any) -> Any:
    """The MLflow UI page of a run: a row with experiment_id and run_id (or a frame of them)."""
    return mlflow_url + "/#/experiments/" + run["experiment_id"] + "/runs/" + run["run_id"]
