"""Experiments and runs: the launch run of a sweep and the child run of each trial, with its
figures (matplotlib Figures, which save without pyplot: no global backend, nothing to close)."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Experiment, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.errors import SweeperError, first_line
from sweeper.records import Artifact, Kind, Tag
from sweeper.stores.tracking.checkpoints import reference
from sweeper.stores.tracking.client import RetryingClient, is_transient, new_sqlite_store
from sweeper.stores.tracking.plots import confusion_counts

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (characters)
MAX_REASON_LENGTH = 500  # characters of a failure reason kept in the sweeper.fail_reason tag
MAX_METRICS_PER_CALL = 1000  # MLflow's limit on one log_batch
# Epochs that end sooner than this after the last write are sent with the next one (or with the
# trial's end): a one-second trial makes one call to the store, not two.
SEND_EVERY_S = 5.0
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # Optuna -> MLflow
# MLflow 3 shows an experiment without this tag as GenAI (traces); sweeper's train models.
MODEL_TRAINING = {"mlflow.experimentKind": "custom_model_development"}


def experiment_for(tracking_uri: str, study_name: str, artifact_root: str | None = None) -> str:
    """Get or create the experiment named after the study and return its id. With a sqlite store
    and no artifact_root, artifacts go next to the database file (not into ./mlruns)."""
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.endswith(":memory:"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        artifact_root = artifact_root or str(database.parent / "artifacts")
        if not database.exists():
            new_sqlite_store(database, artifact_root)
    client = RetryingClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        try:
            return client.create_experiment(
                study_name, artifact_location=artifact_root, tags=MODEL_TRAINING
            )
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(study_name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise SweeperError(
            f"MLflow experiment '{study_name}' (id {experiment.experiment_id}) in {tracking_uri}"
            " is deleted; restore it (mlflow experiments restore --experiment-id"
            f" {experiment.experiment_id}) or remove it for good (mlflow gc)"
        )
    _mark_model_training(client, experiment)
    return experiment.experiment_id


def _mark_model_training(client: RetryingClient, experiment: Experiment) -> None:
    """Tag an experiment as model training: one sweeper made before it tagged them too."""
    for key, value in MODEL_TRAINING.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def experiment_to_show(
    tracking_uri: str, study_name: str | None, view_key: str, view: dict[str, Any]
) -> str | None:
    """The id of the study's experiment (default: the one with the newest run; None if there
    is none), tagged as model training and given `view` as MLflow's shared view `view_key`."""
    client = RetryingClient(tracking_uri)
    if study_name is not None:
        experiment = client.get_experiment_by_name(study_name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            raise SweeperError(f"no MLflow experiment '{study_name}' in {tracking_uri}")
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
        newest = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"])
        if not newest:
            return None
        experiment = client.get_experiment(newest[0].info.experiment_id)
    _mark_model_training(client, experiment)
    key = f"mlflow.sharedViewState.{view_key}"  # what the UI's ?viewStateShareKey= loads
    client.set_experiment_tag(experiment.experiment_id, key, json.dumps(view))
    return experiment.experiment_id


def start_launch_run(
    tracking_uri: str, experiment_id: str, study_name: str, tags: dict[str, str]
) -> str:
    """Start the parent run of one launch and return its id. Launch runs left RUNNING by a
    launcher of this host that was killed (its process gone) are ended as KILLED first."""
    client = RetryingClient(tracking_uri)
    host = socket.gethostname()
    stale = f"tags.`{Tag.KIND}` = '{Kind.LAUNCH}' and tags.`{Tag.HOST}` = '{host}'"
    for run in client.search_runs([experiment_id], f"{stale} and attributes.status = 'RUNNING'"):
        if not _alive(int(run.data.tags[Tag.PID])):
            client.set_terminated(run.info.run_id, status="KILLED")
    run_tags = {**tags, Tag.KIND: Kind.LAUNCH, Tag.STUDY: study_name, Tag.HOST: host,
                Tag.PID: str(os.getpid())}  # fmt: skip
    run_name = f"{study_name}-launch-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.create_run_once(experiment_id, run_tags, run_name).info.run_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def end_run(
    tracking_uri: str, run_id: str, status: str, tags: dict[str, str] | None = None
) -> None:
    """End a run as FINISHED, FAILED or KILLED (with tags that say how it ended)."""
    client = RetryingClient(tracking_uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def run_config(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The exact training config a trial ran, read back from its config.json artifact."""
    client = RetryingClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise SweeperError(f"--from-run: no run {run_id} in {tracking_uri}") from None
    if Artifact.CONFIG not in {info.path for info in client.list_artifacts(run_id)}:
        raise SweeperError(
            f"--from-run: run {run_id} has no {Artifact.CONFIG} (not a sweeper trial)"
        )
    return client.load_dict(run_id, Artifact.CONFIG)


class TrialTracker:
    """Logs the trials of one worker as child runs of the launch run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str | None) -> None:
        self.client = RetryingClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.pending: list[tuple[str, list[Metric]]] = []  # epochs the server has not taken yet
        self.buffering = False
        self.sent_at = 0.0  # time.monotonic() of the last write of metrics
        self.artifacts: dict[str, Any] = {}  # the artifact repository of the run started last

    def start(
        self,
        study_name: str,
        trial_number: int,
        config: dict[str, Any],
        tags: dict[str, str],
        run_id: str | None = None,
        run_name: str | None = None,
    ) -> str:
        """Start the run of a trial (named run_name, default trial-<number>), or reopen `run_id`
        for a retry; return the run id."""
        run_tags = {
            Tag.KIND: Kind.TRIAL,  # an ensemble member passes its own kind in tags
            **{key: str(value) for key, value in tags.items()},
            Tag.STUDY: study_name,
            Tag.TRIAL: str(trial_number),
            Tag.OPTUNA_STATE: "RUNNING",
        }
        if run_id is not None:  # a retried trial goes on in its first try's run
            run_tags[Tag.RETRY_OF] = self.client.get_run(run_id).data.tags[Tag.TRIAL]
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
            return run_id
        if self.parent_run_id is not None:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        run_name = run_name or f"trial-{trial_number}"
        run = self.client.create_run_once(self.experiment_id, run_tags, run_name)
        # Known from the new run: MLflow would read the run again to find it, at each artifact.
        repo = get_artifact_repository(run.info.artifact_uri, self.client.tracking_uri)
        self.artifacts = {run.info.run_id: repo}
        own = config.get("model_args") or {}  # your builder's options: a param each
        flat = {**{k: v for k, v in own.items() if k not in config}, **config}
        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flat.items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.log_dict(run.info.run_id, config, Artifact.CONFIG)
        return run.info.run_id

    def log_artifact(self, run_id: str, local_path: str, folder: str | None = None) -> None:
        """The client's log_artifact, through the known repository of a run started here."""
        repo = self.artifacts.get(run_id)
        if repo is None:
            self.client.log_artifact(run_id, local_path, folder)
        elif self.client.remote:
            self.client.wait_for(repo.log_artifact, local_path, folder)
        else:
            repo.log_artifact(local_path, folder)

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        """The client's log_dict (JSON), through log_artifact."""
        folder, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, name)
            path.write_text(json.dumps(data, indent=2))
            self.log_artifact(run_id, str(path), folder or None)

    def logged_epochs(self, run_id: str) -> set[int]:
        """The epochs (steps) that already have a val_acc in the run."""
        return {metric.step for metric in self.client.get_metric_history(run_id, "val_acc")}

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        """One epoch's metrics at step=epoch, in a single call to the store."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
        self._buffer(run_id, batch)
        if time.monotonic() - self.sent_at >= SEND_EVERY_S:
            self.flush(wait=False)

    def _buffer(self, run_id: str, batch: list[Metric]) -> None:
        """Add metrics to the last unsent batch of the run where it has room, else queue them."""
        if self.pending and self.pending[-1][0] == run_id:
            last = self.pending[-1][1]
            if len(last) + len(batch) <= MAX_METRICS_PER_CALL:
                self.pending[-1] = (run_id, last + batch)
                return
        self.pending.append((run_id, batch))

    def flush(self, wait: bool = True) -> None:
        """Send the buffered epochs in order; while the server is unreachable, wait=False keeps
        them for the next call (training goes on). A batch sent twice (a lost reply) is harmless:
        MLflow drops a metric already stored with the same key, value, timestamp and step."""
        send = self.client.log_batch if wait else self.client.raw.log_batch
        while self.pending:
            run_id, batch = self.pending[0]
            try:
                send(run_id, metrics=batch)
                self.sent_at = time.monotonic()
            except Exception as error:
                if wait or not self.client.remote or not is_transient(error):
                    raise
                if not self.buffering:
                    log.warning("tracking server %s unreachable (%s): buffering epoch metrics",
                                self.client.tracking_uri, first_line(error))  # fmt: skip
                    self.buffering = True
                return
            self.pending.pop(0)
        if self.buffering:
            log.warning("tracking server %s is back: buffered epochs written",
                        self.client.tracking_uri)  # fmt: skip
            self.buffering = False

    def finish(
        self,
        run_id: str,
        state: str,
        classes: list[str] | None = None,
        val_labels: Sequence[int] | np.ndarray | None = None,
        val_predictions: Sequence[int] | np.ndarray | None = None,
        checkpoint: Path | None = None,
        summary: dict[str, float] | None = None,
        reason: str | None = None,
    ) -> str | None:
        """Record the trial's Optuna state (a key of RUN_STATUS), summary, plots and checkpoint;
        end the run. Return the reference of the logged checkpoint (see tracking.checkpoints).
        A failing artifact step is logged as a warning: the run still ends."""
        logged = None
        try:
            tags = [RunTag(Tag.OPTUNA_STATE, state)]
            if reason is not None:
                tags.append(RunTag(Tag.FAIL_REASON, reason[:MAX_REASON_LENGTH]))
            now = int(time.time() * 1000)
            self._buffer(run_id, [Metric(k, float(v), now, 0) for k, v in (summary or {}).items()])
            _, metrics = self.pending.pop()  # its last epochs and the summary: one call
            self.flush()
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self.sent_at = time.monotonic()
            if val_labels is not None and val_predictions is not None:
                with warn_on_error("confusion matrix", run_id):
                    n = int(max(np.max(val_labels), np.max(val_predictions))) + 1
                    names = classes or [str(i) for i in range(n)]
                    counts = confusion_counts(val_labels, val_predictions, len(names))
                    confusion = {"classes": names, "counts": counts.tolist()}
                    self.log_dict(run_id, confusion, Artifact.CONFUSION_COUNTS)
            if checkpoint is not None:
                with warn_on_error("checkpoint", run_id):
                    self.log_artifact(run_id, str(checkpoint), Artifact.CHECKPOINTS)
                    logged = reference(run_id, checkpoint)
        finally:
            self.client.set_terminated(run_id, status=RUN_STATUS[state])
            self.artifacts.pop(run_id, None)
        return logged


@contextmanager
def warn_on_error(what: str, run_id: str) -> Iterator[None]:
    """Log a failing artifact step as a warning and go on."""
    try:
        yield
    except Exception:
        log.warning("could not log the %s of run %s", what, run_id, exc_info=True)
