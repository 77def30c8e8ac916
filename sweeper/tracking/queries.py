"""What reports read from MLflow, as pandas DataFrames.

Runs come as mlflow.search_runs lays them out: one row per run with the columns run_id,
experiment_id, status, artifact_uri, start_time, end_time (UTC timestamps), then metrics.<key>,
params.<key> and tags.<key> for every key any of the runs has (NaN where a run lacks it).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Run

from sweeper.tracking.client import PatientClient

RUN_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
HISTORY_COLUMNS = ["run_id", "key", "step", "value"]


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as a DataFrame, one row each (the columns of the module docstring)."""
    rows = [
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
            **{f"metrics.{key}": value for key, value in run.data.metrics.items()},
            **{f"params.{key}": value for key, value in run.data.params.items()},
            **{f"tags.{key}": value for key, value in run.data.tags.items()},
        }
        for run in runs
    ]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)


def runs_of_study(tracking_uri: str, study_name: str) -> pd.DataFrame:
    """The trial runs of a study (tag sweeper.kind == "trial"), in trial-number order."""
    runs = [
        run
        for run in _search(PatientClient(tracking_uri), study_name, "trial")
        if run.data.tags.get("sweeper.study") == study_name
    ]
    runs.sort(key=lambda run: int(run.data.tags.get("sweeper.trial", -1)))
    return runs_frame(runs).reset_index(drop=True)


def latest_run(tracking_uri: str, study_name: str, kind: str) -> pd.Series | None:
    """The newest run of a study tagged sweeper.kind == kind ("launch", "ensemble") as one row
    (the columns of runs_frame), or None."""
    runs = _search(PatientClient(tracking_uri), study_name, kind, ["attributes.start_time DESC"])
    run = next((run for run in runs if run.data.tags.get("sweeper.study") == study_name), None)
    return None if run is None else runs_frame([run]).iloc[0]


def _search(
    client: PatientClient, study_name: str, kind: str, order_by: list[str] | None = None
) -> Iterator[Run]:
    """The runs of the study's experiment tagged sweeper.kind == kind, page by page."""
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`sweeper.kind` = '{kind}'",
            order_by=order_by,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def metric_histories(
    tracking_uri: str, run_ids: Sequence[str], keys: Sequence[str]
) -> pd.DataFrame:
    """Every logged value of the metrics `keys` of the runs, one row each: run_id, key, step,
    value, sorted by run, key and step. A step logged twice keeps its last value."""
    client = PatientClient(tracking_uri)
    rows = [
        (run_id, metric.key, metric.step, metric.value, metric.timestamp)
        for run_id in run_ids
        for key in keys
        for metric in client.get_metric_history(run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, "timestamp"])
    frame = frame.sort_values("timestamp", kind="stable")
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    frame = frame.sort_values(["run_id", "key", "step"]).drop(columns="timestamp")
    return frame.reset_index(drop=True)


def ensemble_table(tracking_uri: str, run_id: str) -> pd.DataFrame:
    """The member table (ensemble_members.json) of an ensemble run."""
    client = PatientClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "ensemble_members.json", dst_path=tmp)
        table = json.loads(Path(path).read_text())
    return pd.DataFrame(table["data"], columns=table["columns"])


def log_report(
    tracking_uri: str, run_id: str, paths: Sequence[Path], folder: str = "report"
) -> None:
    """Attach report files (HTML, CSV) to a run, under `folder/` of its artifacts."""
    client = PatientClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), folder)
