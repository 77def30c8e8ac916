"""What a dashboard reads: a study's trials and its MLflow runs, collected once as DataFrames."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from sweeper.paths import SweepPaths

CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "seconds")
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the others ignore the momentum setting
SETTINGS = ("trial", "state", "setting", "model", "gpu", "device", "batch_size", "activation",
            "init", "optimizer", "lr", "momentum", "weight_decay", "lr_decay", "train_minutes",
            "best_epoch", "epochs_run", "val_acc", "value", "other", "status", "fail_reason",
            "retry_of", "worker", "start", "end", "mlflow_run", "run_id")  # fmt: skip
SHOWN = {"model", "batch_size", "activation", "init", "optimizer", "lr", "momentum",
         "weight_decay", "schedule", "milestones", "gamma", "device"}  # fmt: skip


@dataclass
class StudyData:
    """Everything a dashboard may show, read once from the Optuna storage and MLflow.

    Runs are rows as sweeper.tracking returns them (pandas Series with run_id, status,
    metrics.<key>, params.<key>, tags.<key>, ...).
    """

    name: str
    study: optuna.Study  # for optuna.visualization
    trials: list[optuna.trial.FrozenTrial]  # by number; surplus claims left out
    settings: pd.DataFrame  # one row per trial: the documents' columns and more (see _settings)
    curves: pd.DataFrame  # one row per trial and epoch: the MLflow runs' per-epoch metrics
    launch: pd.Series | None  # the latest launch run (the report is logged there)
    ensemble: pd.Series | None  # the latest ensemble run
    members: pd.DataFrame | None  # that run's ensemble_members.json table
    collected: datetime

    @property
    def metric(self) -> str:
        return "val_acc" if self.maximize else "val_loss"

    @property
    def maximize(self) -> bool:
        return self.study.direction.name == "MAXIMIZE"

    def count(self, state: str) -> int:
        return int((self.settings["state"] == state).sum()) if len(self.settings) else 0

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
        index = done["value"].idxmax() if self.maximize else done["value"].idxmin()
        return done.loc[index]


def collect(name: str, paths: SweepPaths, mlflow_url: str) -> StudyData:
    """Read the study, its trial runs and their metric histories, and the ensemble run."""
    from sweeper import tracking  # loaded on demand: the CLI stays quick
    from sweeper.storage import counted_trials, load_stored_study, make_storage

    study = load_stored_study(name, make_storage(paths.storage_url), paths.storage_url)
    trials = counted_trials(study)
    uri = paths.tracking_uri
    runs = tracking.runs_of_study(uri, name)
    curves = _curves(trials, runs, tracking.metric_histories(uri, runs["run_id"], CURVE_METRICS))
    ensemble = tracking.latest_run(uri, name, "ensemble")
    return StudyData(
        name=name,
        study=study,
        trials=trials,
        settings=_settings(trials, runs, curves, mlflow_url.rstrip("/")),
        curves=curves,
        launch=tracking.latest_run(uri, name, "launch"),
        ensemble=ensemble,
        members=None if ensemble is None else tracking.ensemble_table(uri, ensemble["run_id"]),
        collected=datetime.now(),
    )


def _linked(trial: optuna.trial.FrozenTrial, runs: pd.DataFrame) -> pd.Series | None:
    """The run the trial names (its user attr mlflow_run_id); `runs` is indexed by run_id."""
    run_id = trial.user_attrs.get("mlflow_run_id", "")
    return runs.loc[run_id] if run_id in runs.index else None


def _own_run(trial: optuna.trial.FrozenTrial, runs: pd.DataFrame) -> pd.Series | None:
    """The trial's MLflow run, unless a retry continued it (the run then counts for the retry)."""
    run = _linked(trial, runs)
    return run if _get(run, "tags.sweeper.trial") == str(trial.number) else None


def _get(run: pd.Series | None, key: str, default: Any = None) -> Any:
    """A run's value, or `default` where there is no run or the run lacks it (NaN)."""
    value = None if run is None else run.get(key)
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _curves(
    trials: list[optuna.trial.FrozenTrial], runs: pd.DataFrame, histories: pd.DataFrame
) -> pd.DataFrame:
    """One row per trial and epoch: the per-epoch metrics of each trial's own run."""
    indexed = runs.set_index("run_id", drop=False)
    own = {}
    for trial in trials:
        run = _own_run(trial, indexed)
        if run is not None:
            own[run["run_id"]] = trial.number
    points = histories[histories["run_id"].isin(list(own))]
    frame = points.pivot(index=["run_id", "step"], columns="key", values="value").reset_index()
    frame = frame.rename_axis(columns=None).reindex(columns=["run_id", "step", *CURVE_METRICS])
    frame.insert(0, "trial", frame.pop("run_id").map(own))
    frame.insert(1, "setting", frame["trial"].map({t.number: _label(t) for t in trials}))
    frame = frame.rename(columns={"step": "epoch"})
    return frame.sort_values(["trial", "epoch"]).reset_index(drop=True)


def _label(trial: optuna.trial.FrozenTrial) -> str:
    """A setting's short name: trial number, model, optimizer and the suggested values."""
    config = trial.user_attrs.get("config", {})
    parts = [f"#{trial.number}", str(config.get("model", "")), str(config.get("optimizer", ""))]
    parts += [
        f"{k}={_short(v)}" for k, v in trial.params.items() if k not in ("model", "optimizer")
    ]
    return " ".join(p for p in parts if p)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _settings(
    trials: list[optuna.trial.FrozenTrial],
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    mlflow_url: str,
) -> pd.DataFrame:
    """One row per trial: the documents' evaluation columns, then state, timing and links."""
    import pandas as pd

    indexed = runs.set_index("run_id", drop=False)
    seconds = curves.groupby("trial")["seconds"].sum(min_count=1)
    epochs = curves.dropna(subset=["val_acc"]).groupby("trial")["epoch"].max()
    rows = [
        {
            **_setting(trial, _linked(trial, indexed), _own_run(trial, indexed), mlflow_url),
            "train_minutes": seconds.get(trial.number, math.nan) / 60,
            "epochs_run": epochs.get(trial.number),
        }
        for trial in trials
    ]
    frame = pd.DataFrame(rows, columns=list(SETTINGS))
    return frame.astype(
        {k: "Int64" for k in ("batch_size", "best_epoch", "epochs_run", "retry_of")}
    )


def _setting(
    t: optuna.trial.FrozenTrial, linked: pd.Series | None, run: pd.Series | None, mlflow_url: str
) -> dict[str, Any]:
    """A trial's row of settings; metrics only from its own run, the link to the run it names."""
    config = t.user_attrs.get("config", {})
    device = _get(linked, "tags.sweeper.device", "") if linked is not None else config.get("device")
    optimizer = config.get("optimizer")
    best_epoch = _get(run, "metrics.best_epoch")
    return {
        "trial": t.number,
        "state": t.state.name,
        "setting": _label(t),
        "model": _model(config),
        "gpu": "O" if str(device).startswith("cuda") else "X",
        "device": device,
        "batch_size": config.get("batch_size"),
        "activation": config.get("activation"),
        "init": config.get("init"),
        "optimizer": optimizer,
        "lr": config.get("lr"),
        "momentum": config.get("momentum") if optimizer in MOMENTUM_OPTIMIZERS else None,
        "weight_decay": config.get("weight_decay"),
        "lr_decay": _lr_decay(config),
        "best_epoch": int(best_epoch) if best_epoch else None,
        "val_acc": _get(run, "metrics.best_val_acc"),
        "value": t.value,
        "other": ", ".join(f"{k}={_short(v)}" for k, v in t.params.items() if k not in SHOWN),
        "status": t.user_attrs.get("train_status", ""),
        "fail_reason": _fail_reason(t),
        "retry_of": t.system_attrs.get("failed_trial"),
        "worker": t.user_attrs.get("worker", ""),
        "start": t.datetime_start,
        "end": t.datetime_complete,
        "mlflow_run": run_url(mlflow_url, linked) if linked is not None else "",
        "run_id": linked["run_id"] if linked is not None else "",
    }


def _fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state.name != "FAIL":
        return ""
    if "interrupted" in trial.user_attrs:
        return "interrupted by Ctrl-C or SIGTERM"
    return trial.user_attrs.get("fail_reason", "no heartbeat: its worker died")


def _model(config: dict[str, Any]) -> str:
    model = str(config.get("model", ""))
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


def run_url(mlflow_url: str, run: pd.Series) -> str:
    """The MLflow UI page of a run (a row with experiment_id and run_id)."""
    return f"{mlflow_url}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
