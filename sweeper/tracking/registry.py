"""The ensemble run and the Model Registry: register a study's ensemble, read a version back."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.errors import SweeperError, first_line
from sweeper.tracking.client import PatientClient
from sweeper.tracking.runs import MAX_PARAM_LENGTH

MODEL_PATH = "ensemble"  # the model's folder in the ensemble run's artifacts
CODE = Path(__file__).resolve().parents[1]  # the sweeper package, saved with the model


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
) -> dict[str, Any]:
    """The ensemble run with the model registered under the study's name; the alias `champion`
    moves to the new version when it beats the champion's test accuracy (or there is none)."""
    client = PatientClient(tracking_uri)
    tags = {"sweeper.kind": "ensemble", "sweeper.study": study_name}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if note:
        tags["sweeper.note"] = note
    run_id = client.create_run_once(experiment_id, tags, f"{study_name}-ensemble").info.run_id
    _log_members(client, run_id, report, member_runs)
    version = _register(client, run_id, study_name, model, example)
    champion = _move_champion(client, study_name, version, report.ensemble_test_acc)
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "model_name": study_name, "version": version, "champion": champion}


def _log_members(
    client: PatientClient, run_id: str, report: Any, member_runs: list[dict[str, Any]]
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
    client.log_table(run_id, pd.DataFrame(report.table()), "ensemble_members.json")
    client.log_dict(run_id, {"members": member_runs}, "members.json")
    for member in member_runs:
        source = RunTag("sweeper.source_trial", str(member["source_trial"]))
        client.log_batch(member["run_id"], tags=[source, RunTag("sweeper.ensemble_run", run_id)])


def _register(client: PatientClient, run_id: str, name: str, model: Any, example: Any) -> str:
    """Save the model into the run's `ensemble/` folder and register it; return the version."""
    import mlflow.pytorch
    import torch
    from mlflow.models import Model, infer_signature

    inputs = example.astype(np.float32) / 255.0
    with torch.no_grad():
        outputs = model(torch.from_numpy(inputs)).numpy()
    # pickle is chosen knowingly (see below): MLflow's warning about it would only alarm users
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pytorch.save_model(
            model,
            str(Path(tmp) / MODEL_PATH),
            mlflow_model=Model(artifact_path=MODEL_PATH, run_id=run_id),
            signature=infer_signature(inputs, outputs),
            input_example=inputs,
            code_paths=[str(CODE)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
            metadata={"classes": list(model.classes), "input_shape": list(model.input_shape)},
            serialization_format="pickle",  # keeps the Ensemble class, its classes and shape
        )
        client.log_artifacts(run_id, str(Path(tmp) / MODEL_PATH), MODEL_PATH)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_PATH}"
    version = client.create_model_version(name, source, run_id=run_id, await_creation_for=0)
    return str(version.version)


def _move_champion(client: PatientClient, name: str, version: str, test_acc: float) -> bool:
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
    """The registered ensemble of a study as a torch module (the champion by default)."""
    import mlflow.pytorch

    with tempfile.TemporaryDirectory() as tmp:
        local = download_registered(tracking_uri, name, Path(tmp), alias)
        return mlflow.pytorch.load_model(str(local), map_location="cpu")


def download_registered(tracking_uri: str, name: str, out: Path, alias: str = "champion") -> Path:
    """Copy the registered MLflow model directory of a study's ensemble into `out`."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = PatientClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise SweeperError(
            f"export: no registered ensemble '{name}@{alias}' in {tracking_uri} "
            f"({first_line(exc)}); run `sweeper ensemble {name}` first"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    uri = client.get_model_version_download_uri(name, version.version)
    repository = get_artifact_repository(uri, tracking_uri=tracking_uri)
    return Path(repository.download_artifacts("", dst_path=str(out)))
