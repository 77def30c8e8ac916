"""The ensemble run and the Model Registry: register a study's ensemble, read a version back."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.errors import SweeperError, first_line
from sweeper.records import Artifact, Kind, Tag
from sweeper.stores.tracking.client import RetryingClient
from sweeper.stores.tracking.model import read_model, save_model
from sweeper.stores.tracking.runs import MAX_PARAM_LENGTH


@dataclass(frozen=True)
class Registered:
    """An ensemble run and the registered model version it made."""

    run_id: str
    model_name: str
    version: str
    champion: bool  # the alias `champion` moved to this version


def log_ensemble(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str | None,
    study_name: str,
    *,
    report: Any,
    member_runs: list[dict[str, Any]],
    model: Any,
    example: np.ndarray,
    note: str | None = None,
) -> Registered:
    """The ensemble run with the model registered under the study's name; the alias `champion`
    moves to the new version when it beats the champion's test accuracy (or there is none)."""
    client = RetryingClient(tracking_uri)
    tags = {Tag.KIND: Kind.ENSEMBLE, Tag.STUDY: study_name}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if note:
        tags[Tag.NOTE] = note
    run_id = client.create_run_once(experiment_id, tags, f"{study_name}-ensemble").info.run_id
    _log_members(client, run_id, report, member_runs)
    version = _register(client, run_id, study_name, model, example)
    champion = _move_champion(client, study_name, version, report.ensemble_test_acc)
    client.set_terminated(run_id, "FINISHED")
    return Registered(run_id, study_name, version, champion)


def _log_members(
    client: RetryingClient, run_id: str, report: Any, member_runs: list[dict[str, Any]]
) -> None:
    """The ensemble's metrics and member tables; each member run is tagged with the ensemble's."""
    metrics = {
        "ensemble_test_acc": report.ensemble_test_acc,
        "ensemble_val_acc": report.ensemble_val_acc,
        "best_member_test_acc": report.best_member_test_acc,
        "gain_over_best_member": report.gain,
        "members": len(member_runs),
        "greedy_test_acc": report.greedy_test_acc,  # None without greedy selection
        "greedy_val_acc": report.greedy_val_acc,
    }
    now = int(time.time() * 1000)
    member_ids = ",".join(member["run_id"] for member in member_runs)[:MAX_PARAM_LENGTH]
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        params=[Param("member_run_ids", member_ids)],
    )
    client.log_table(run_id, pd.DataFrame(report.table()), Artifact.ENSEMBLE_TABLE)
    client.log_dict(run_id, {"members": member_runs}, Artifact.ENSEMBLE_MEMBERS)
    for member in member_runs:
        source = RunTag(Tag.SOURCE_TRIAL, str(member["source_trial"]))
        client.log_batch(member["run_id"], tags=[source, RunTag(Tag.ENSEMBLE_RUN, run_id)])


def _register(client: RetryingClient, run_id: str, name: str, model: Any, example: Any) -> str:
    """Save the model into the run's `ensemble/` folder and register it; return the version."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Artifact.ENSEMBLE_MODEL
        metadata = Model(artifact_path=Artifact.ENSEMBLE_MODEL, run_id=run_id)
        save_model(model, local, example.astype(np.float32) / 255.0, mlflow_model=metadata)
        client.log_artifacts(run_id, str(local), Artifact.ENSEMBLE_MODEL)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{Artifact.ENSEMBLE_MODEL}"
    version = client.create_model_version(name, source, run_id=run_id, await_creation_for=0)
    return str(version.version)


def _move_champion(client: RetryingClient, name: str, version: str, test_acc: float) -> bool:
    try:
        champion = client.get_model_version_by_alias(name, "champion")
        best = client.get_run(champion.run_id).data.metrics.get("ensemble_test_acc", -1.0)
    except MlflowException:  # no champion yet
        best = -1.0
    if test_acc <= best:
        return False
    client.set_registered_model_alias(name, "champion", version)
    return True


def load_registered(tracking_uri: str, name: str, alias: str = "champion") -> Any:
    """The registered ensemble of a study (the champion by default), rebuilt by sweeper from its
    tensors-only files: nothing stored on the tracking server runs (see tracking.model)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = RetryingClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise SweeperError(
            f"export: no registered ensemble '{name}@{alias}' in {tracking_uri} "
            f"({first_line(exc)}); run `sweeper ensemble {name}` first"
        ) from None
    uri = client.get_model_version_download_uri(name, version.version)
    repository = get_artifact_repository(uri, tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = repository.download_artifacts("", dst_path=tmp)
        try:
            return read_model(Path(local), name)
        except SweeperError as exc:  # named by where it is stored, not by the temporary copy
            raise SweeperError(f"export: {name}@{alias}: {exc}".replace(local, uri)) from None
