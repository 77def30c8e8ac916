"""A trial's best weights, kept once: an artifact of its MLflow run, named by a reference
`runs:/RUN_ID/checkpoints/trial-N-best.pt` (a trial's user attribute `checkpoint`). Workers and
launchers on other hosts reach it through the tracking server. Where logging it failed, the
reference is the local file the trial wrote, which then stays."""

from __future__ import annotations

import posixpath
import urllib.parse
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from sweeper.records import Artifact
from sweeper.stores.tracking.client import RetryingClient

RUNS = "runs:/"


def reference(run_id: str, file: Path) -> str:
    """How a trial names its best weights once `file` is logged to its run."""
    return f"{RUNS}{run_id}/{Artifact.CHECKPOINTS}/{file.name}"


def _artifact(ref: str) -> tuple[str, str] | None:
    """(run id, artifact path) of a reference to an artifact; None for a local file."""
    if not ref.startswith(RUNS):
        return None
    run_id, path = ref.removeprefix(RUNS).split("/", 1)
    return run_id, path


def checkpoint_size(tracking_uri: str, ref: str, artifact_uri: str | None = None) -> int | None:
    """Bytes of the stored best weights; None where they are gone (or never were). Given the
    run's artifact URI, its artifacts are listed without reading the run first."""
    where = _artifact(ref)
    if where is None:
        path = Path(ref)
        return path.stat().st_size if ref and path.is_file() else None
    run_id, path = where
    client = RetryingClient(tracking_uri)
    try:
        if artifact_uri is None:
            listed = client.list_artifacts(run_id, posixpath.dirname(path))
        else:
            repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
            listed = client.wait_for(repository.list_artifacts, posixpath.dirname(path))
    except MlflowException:  # the run itself was deleted
        return None
    return next((info.file_size for info in listed if info.path == path), None)


def fetch_checkpoint(tracking_uri: str, ref: str, into: Path) -> Path:
    """A local file of the best weights: the artifact itself where the artifact store is a local
    folder (the embedded store), else a download into the folder `into`."""
    where = _artifact(ref)
    if where is None:
        return Path(ref)
    run_id, path = where
    client = RetryingClient(tracking_uri)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(urllib.parse.unquote(parsed.path)) / path
    folder = into / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, dst_path=str(folder)))


def delete_checkpoint(tracking_uri: str, ref: str, artifact_uri: str | None = None) -> None:
    """Remove the stored best weights (the run keeps its metrics, plots and config)."""
    where = _artifact(ref)
    if where is None:
        Path(ref).unlink(missing_ok=True)
        return
    run_id, path = where
    client = RetryingClient(tracking_uri)
    artifact_uri = artifact_uri or client.get_run(run_id).info.artifact_uri
    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    client.wait_for(repository.delete_artifacts, path)
