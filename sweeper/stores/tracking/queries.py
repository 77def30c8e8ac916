"""What reports read from MLflow, as pandas DataFrames."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Run

from sweeper.records import Artifact, Kind, Tag
from sweeper.stores.tracking.client import RetryingClient

RUN_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
HISTORY_KEYS = ["run_id", "key", "step"]


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run, as mlflow.search_runs lays them out: run_id, experiment_id, status,
    artifact_uri, start_time, end_time (UTC timestamps), then metrics.<key>, params.<key> and
    tags.<key> for every key any of the runs has (NaN where a run lacks it)."""
    rows = [
        {**{c: getattr(run.info, c) for c in RUN_COLUMNS}, **run.data.to_dictionary()}
        for run in runs  # json_normalize flattens {"metrics": {key: value}} to metrics.<key>
    ]
    frame = pd.json_normalize(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)
    times = ["start_time", "end_time"]  # milliseconds since the epoch
    frame[times] = frame[times].apply(pd.to_datetime, unit="ms", utc=True)
    return frame


def runs_of_study(tracking_uri: str, study_name: str) -> pd.DataFrame:
    """The trial runs of a study (tag sweeper.kind == "trial"), in trial-number order."""
    runs = _search(tracking_uri, study_name, Kind.TRIAL)
    return runs_frame(sorted(runs, key=lambda run: int(run.data.tags[Tag.TRIAL])))


def runs_by_id(
    tracking_uri: str, study_name: str, run_ids: Sequence[str]
) -> tuple[pd.DataFrame, str | None]:
    """The study's trial runs of these ids, in trial-number order, and the experiment's id (None
    where it has none): a search per hundred runs, not pages of all of them."""
    client = RetryingClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return runs_frame([]), None
    runs: list[Run] = []
    for start in range(0, len(run_ids), 100):
        listed = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        query = f"tags.`{Tag.KIND}` = '{Kind.TRIAL}' and attributes.run_id IN ({listed})"
        runs += client.search_runs([experiment.experiment_id], query, max_results=100)
    ordered = sorted(runs, key=lambda run: int(run.data.tags[Tag.TRIAL]))
    return runs_frame(ordered), experiment.experiment_id


def latest_run(tracking_uri: str, study_name: str, kind: str) -> pd.Series | None:
    """The newest run of a study tagged sweeper.kind == kind ("launch", "ensemble"), or None."""
    runs = _search(tracking_uri, study_name, kind, ["attributes.start_time DESC"])
    return runs_frame(runs[:1]).iloc[0] if runs else None


def _search(uri: str, study: str, kind: str, order_by: list[str] | None = None) -> list[Run]:
    """The runs tagged sweeper.kind == kind in the study's experiment, all pages."""
    client = RetryingClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    query = f"tags.`{Tag.KIND}` = '{kind}'"
    ids = [experiment.experiment_id]
    page = client.search_runs(ids, query, order_by=order_by)
    runs = list(page)
    while page.token:
        page = client.search_runs(ids, query, order_by=order_by, page_token=page.token)
        runs += page
    return runs


def metric_histories(
    tracking_uri: str, run_ids: Sequence[str], keys: Sequence[str]
) -> pd.DataFrame:
    """Every logged value of the metrics `keys` of the runs, one row each: run_id, key, step,
    value, sorted by run, key and step. A step logged twice keeps its last value."""
    client = RetryingClient(tracking_uri)
    rows = [
        (run_id, metric.key, metric.step, metric.value, metric.timestamp)
        for run_id in run_ids
        for key in keys
        for metric in client.get_metric_history(run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=[*HISTORY_KEYS, "value", "timestamp"])
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates(HISTORY_KEYS, keep="last")
    return frame.sort_values(HISTORY_KEYS).drop(columns="timestamp").reset_index(drop=True)


def ensemble_table(tracking_uri: str, run_id: str) -> pd.DataFrame:
    """The member table (ensemble_members.json) of an ensemble run."""
    table = RetryingClient(tracking_uri).load_dict(run_id, Artifact.ENSEMBLE_TABLE)
    return pd.DataFrame(table["data"], columns=table["columns"])


def log_report(tracking_uri: str, run_id: str, paths: Sequence[Path]) -> None:
    """Attach report files (HTML, CSV) to a run, under `report/` of its artifacts."""
    client = RetryingClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), Artifact.REPORT)
