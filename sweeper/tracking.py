"""Everything MLflow: experiments, launch and trial runs, params, metrics, plots, artifacts.

The only module that imports mlflow. Every call names its tracking URI and run id
explicitly (no fluent `mlflow.start_run` state), so worker processes log in parallel.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # workers often have no network
# A tracking server that is down is waited for by sweeper itself (PatientClient, buffered
# epochs), so MLflow's own retries only need to cover a blip, not minutes of backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402
from requests.exceptions import RequestException  # noqa: E402

from sweeper.errors import SweeperError, first_line  # noqa: E402

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CREATE_TOKEN = "sweeper.create_token"  # one per create_run call: finds a run created twice
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (characters)
MAX_REASON_LENGTH = 500  # characters of a failure reason kept in the sweeper.fail_reason tag
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # Optuna -> MLflow
# How long a call waits for an unreachable tracking server before it gives up (seconds).
PATIENCE_S = float(os.environ.get("SWEEPER_TRACKING_PATIENCE_S", "600"))
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(error: BaseException) -> bool:
    """An error of an unreachable or overloaded tracking server, worth trying again."""
    if isinstance(error, RequestException):
        return True
    return isinstance(error, MlflowException) and error.error_code in TRANSIENT_CODES


class PatientClient:
    """An MlflowClient whose calls wait out a tracking server that is down or restarting.

    Only for http(s) tracking URIs: a local store's errors are not outages. Each call is tried
    again with a growing pause until it succeeds or PATIENCE_S has passed; `raw` is the
    plain client, for callers that would rather buffer than wait.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.raw = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.patient = tracking_uri.startswith(("http://", "https://"))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.raw, name)
        if not self.patient or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.wait_for(method, *args, **kwargs)

        return call

    def wait_for(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + PATIENCE_S
        pause = 1.0
        warned = False
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as error:
                if not is_transient(error) or time.monotonic() + pause > deadline:
                    raise
                if not warned:
                    log.warning("tracking server %s unreachable (%s); waiting up to %.0f s",
                                self.tracking_uri, first_line(error), PATIENCE_S)  # fmt: skip
                    warned = True
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if warned:
                log.warning("tracking server %s is back", self.tracking_uri)
            return result

    def create_run_once(self, experiment_id: str, tags: dict[str, str], run_name: str) -> Run:
        """create_run that a lost reply cannot double. Over HTTP the request is then sent again
        (by MLflow's own retry or by wait_for) and the server makes a second run; the run the
        reply named is kept and its double deleted."""
        if not self.patient:  # a local store has no reply to lose
            return self.create_run(experiment_id, tags=tags, run_name=run_name)
        token = uuid.uuid4().hex
        run = self.create_run(experiment_id, tags={**tags, CREATE_TOKEN: token}, run_name=run_name)
        query = f"tags.`{CREATE_TOKEN}` = '{token}'"
        for double in self.search_runs([experiment_id], filter_string=query):
            if double.info.run_id != run.info.run_id:
                self.delete_run(double.info.run_id)
        return run


def experiment_for(tracking_uri: str, study_name: str, artifact_root: str | None = None) -> str:
    """Get or create the experiment named after the study and return its id.

    Called once by the launcher before any worker touches MLflow, so the sqlite store is
    created (and migrated) there. With a sqlite store and no artifact_root, artifacts go next to
    the database file rather than into MLflow's default `./mlruns` of the working directory.
    """
    sqlite_file = _sqlite_path(tracking_uri)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        if artifact_root is None:
            artifact_root = str(sqlite_file.parent / "artifacts")
    client = PatientClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        try:
            return client.create_experiment(study_name, artifact_location=artifact_root)
        except MlflowException as error:  # another process created it first
            experiment = client.get_experiment_by_name(study_name)
            if experiment is None:
                raise error from None
    if experiment.lifecycle_stage == "deleted":
        raise SweeperError(
            f"MLflow experiment '{study_name}' (id {experiment.experiment_id}) in {tracking_uri}"
            " is deleted; restore it (mlflow experiments restore --experiment-id"
            f" {experiment.experiment_id}) or remove it for good (mlflow gc)"
        )
    return experiment.experiment_id


def start_launch_run(
    tracking_uri: str, experiment_id: str, study_name: str, tags: dict[str, str]
) -> str:
    """Start the parent run of one launch and return its id.

    Launch runs left RUNNING by a launcher that was killed (on this host, its process gone)
    are ended as KILLED first.
    """
    client = PatientClient(tracking_uri)
    stale = client.search_runs(
        [experiment_id],
        filter_string="tags.`sweeper.kind` = 'launch' and attributes.status = 'RUNNING'",
    )
    for run in stale:
        tags_of = run.data.tags
        if tags_of.get("sweeper.host") == socket.gethostname() and not _alive(
            int(tags_of.get("sweeper.pid", "0"))
        ):
            client.set_terminated(run.info.run_id, status="KILLED")
    run_name = f"{study_name}-launch-{time.strftime('%Y%m%d-%H%M%S')}"
    all_tags = {**_str_dict(tags), "sweeper.kind": "launch", "sweeper.study": study_name,
                "sweeper.host": socket.gethostname(), "sweeper.pid": str(os.getpid())}  # fmt: skip
    return client.create_run_once(experiment_id, all_tags, run_name).info.run_id


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """End a run as FINISHED, FAILED or KILLED."""
    PatientClient(tracking_uri).set_terminated(run_id, status=status)


def run_config(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The exact training config a trial ran, read back from its config.json artifact."""
    client = PatientClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise SweeperError(f"--from-run: no run {run_id} in {tracking_uri}") from None
    if not any(info.path == CONFIG_FILE for info in client.list_artifacts(run_id)):
        raise SweeperError(f"--from-run: run {run_id} has no {CONFIG_FILE} (not a sweeper trial)")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CONFIG_FILE, dst_path=tmp)
        return json.loads(Path(path).read_text())


def runs_of_study(tracking_uri: str, study_name: str) -> list[Run]:
    """The trial runs of a study (tag sweeper.kind == "trial"), in trial-number order."""
    client = PatientClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return []
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`sweeper.kind` = 'trial'",
            page_token=token,
        )
        runs.extend(run for run in page if run.data.tags.get("sweeper.study") == study_name)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda run: int(run.data.tags.get("sweeper.trial", -1)))


class TrialTracker:
    """Logs the trials of one worker as child runs of the launch run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str | None) -> None:
        self.client = PatientClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.pending: list[tuple[str, list[Metric]]] = []  # epochs the server has not taken yet
        self.buffering = False

    def start(
        self,
        study_name: str,
        trial_number: int,
        config: dict[str, Any],
        tags: dict[str, str],
        run_id: str | None = None,
    ) -> str:
        """Start the run of a trial, or reopen `run_id` for a retry; return the run id."""
        run_tags = {
            "sweeper.kind": "trial",  # an ensemble member passes its own kind in tags
            **_str_dict(tags),
            "sweeper.study": study_name,
            "sweeper.trial": str(trial_number),
            "optuna.state": "RUNNING",
        }
        if run_id is not None:  # a retried trial goes on in its first try's run
            previous = self.client.get_run(run_id).data.tags.get("sweeper.trial", "")
            run_tags["sweeper.retry_of"] = previous
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
            return run_id
        if self.parent_run_id is not None:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        run = self.client.create_run_once(self.experiment_id, run_tags, f"trial-{trial_number}")
        run_id = run.info.run_id
        params = [Param(key, _param_value(value)) for key, value in config.items()]
        self.client.log_batch(run_id, params=params)
        self.client.log_dict(run_id, config, CONFIG_FILE)
        return run_id

    def logged_epochs(self, run_id: str) -> set[int]:
        """The epochs (steps) that already have a val_acc in the run."""
        return {metric.step for metric in self.client.get_metric_history(run_id, "val_acc")}

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        """One epoch's metrics at step=epoch, in a single call to the store."""
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, epoch)
            for key, value in metrics.items()
            if key != "epoch"
        ]
        self.pending.append((run_id, batch))
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Send the buffered epochs in order. While the tracking server is unreachable,
        wait=False keeps them for the next call (training goes on), wait=True waits for it.

        A batch sent twice (a lost reply) is harmless: MLflow drops a metric already stored
        with the same key, value, timestamp and step.
        """
        while self.pending:
            run_id, batch = self.pending[0]
            try:
                if wait:
                    self.client.log_batch(run_id, metrics=batch)
                else:
                    self.client.raw.log_batch(run_id, metrics=batch)
            except Exception as error:
                if wait or not self.client.patient or not is_transient(error):
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
        history: list[dict[str, float]],
        classes: list[str] | None = None,
        val_labels: Sequence[int] | np.ndarray | None = None,
        val_predictions: Sequence[int] | np.ndarray | None = None,
        checkpoint: Path | None = None,
        summary: dict[str, float] | None = None,
        reason: str | None = None,
    ) -> None:
        """Record the trial's Optuna state, summary, plots and checkpoint; end the run.

        state is "COMPLETE" | "PRUNED" (run FINISHED) or "FAIL" (run FAILED). A failing
        artifact step is logged as a warning and never keeps the run from ending.
        """
        if state not in RUN_STATUS:
            raise ValueError(f"state must be one of {sorted(RUN_STATUS)}, not {state!r}")
        try:
            self.flush()
            tags = [RunTag("optuna.state", state)]
            if reason is not None:
                tags.append(RunTag("sweeper.fail_reason", reason[:MAX_REASON_LENGTH]))
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, 0) for k, v in (summary or {}).items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            if history:
                with _warn_on_error("learning curve", run_id):
                    figure = learning_curve(history)
                    self.client.log_figure(run_id, figure, "plots/learning_curve.png")
            if val_labels is not None and val_predictions is not None:
                with _warn_on_error("confusion matrix", run_id):
                    figure = confusion_matrix(val_labels, val_predictions, classes)
                    self.client.log_figure(run_id, figure, "plots/confusion_matrix.png")
            if checkpoint is not None:
                with _warn_on_error("checkpoint", run_id):
                    self.client.log_artifact(run_id, str(checkpoint), "checkpoints")
        finally:
            self.client.set_terminated(run_id, status=RUN_STATUS[state])


@contextmanager
def _warn_on_error(what: str, run_id: str) -> Iterator[None]:
    """Log a failing artifact step as a warning and go on."""
    try:
        yield
    except Exception:
        log.warning("could not log the %s of run %s", what, run_id, exc_info=True)


def learning_curve(history: list[dict[str, float]]) -> Any:
    """Train/val loss and accuracy per epoch, in two panels (a matplotlib Figure)."""
    figure, (loss_ax, acc_ax) = _figure(ncols=2, figsize=(10, 4))
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}", float("nan")) for row in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    classes: list[str] | None = None,
) -> Any:
    """Counts of true class (rows) against predicted class (columns), as a Figure."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    n = len(classes) if classes else int(max(labels.max(), predictions.max())) + 1
    names = classes or [str(i) for i in range(n)]
    counts = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    size = max(4.0, 0.5 * n + 2)
    figure, ax = _figure(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax)
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float(np.trace(counts)) / max(int(counts.sum()), 1)
    ax.set_title(f"validation: {counts.sum()} images, accuracy {accuracy:.4f}")
    if n <= 20:
        middle = counts.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if count > middle else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    figure.tight_layout()
    return figure


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """A figure drawn by the Agg canvas, outside pyplot (no global backend, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    axes = figure.subplots(ncols=ncols)
    return figure, axes


def _param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_LENGTH]


def _str_dict(values: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in values.items()}


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri == prefix + ":memory:":
        return None
    return Path(tracking_uri[len(prefix) :])


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
    """The ensemble run: figures, member table, the model registered under the study's name.

    The alias `champion` moves to the new version when it beats the previous champion's test
    accuracy (or when there is none).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    client = PatientClient(tracking_uri)
    tags = {"sweeper.kind": "ensemble", "sweeper.study": study_name}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if note:
        tags["sweeper.note"] = note
    run = client.create_run_once(experiment_id, tags, f"{study_name}-ensemble")
    run_id = run.info.run_id
    metrics = {
        "ensemble_test_acc": report.ensemble_test_acc,
        "ensemble_val_acc": report.ensemble_val_acc,
        "best_member_test_acc": report.best_member_test_acc,
        "gain_over_best_member": report.gain,
        "members": len(member_runs),
    }
    if report.greedy_test_acc is not None:
        metrics["greedy_test_acc"] = report.greedy_test_acc
        metrics["greedy_val_acc"] = report.greedy_val_acc
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param("member_run_ids", ",".join(m["run_id"] for m in member_runs)[:6000])],
    )
    client.log_table(run_id, data=_frame(report.table()), artifact_file="ensemble_members.json")
    client.log_dict(run_id, {"members": member_runs}, "members.json")
    for member in member_runs:  # each member run points at its source trial and the ensemble
        client.log_batch(
            member["run_id"],
            tags=[
                RunTag("sweeper.source_trial", str(member["source_trial"])),
                RunTag("sweeper.ensemble_run", run_id),
            ],
        )
    inputs = (example.astype(np.float32) / 255.0).astype(np.float32)
    with torch.no_grad():
        outputs = model(torch.from_numpy(inputs)).numpy()
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="ensemble",
                signature=infer_signature(inputs, outputs),
                input_example=inputs,
                registered_model_name=study_name,
                code_paths=[str(Path(__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                metadata={"classes": list(model.classes), "input_shape": list(model.input_shape)},
                serialization_format="pickle",  # keeps the Ensemble class, its classes and shape
                await_registration_for=0,
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    version = str(info.registered_model_version)
    champion = _move_champion(client, study_name, version, report.ensemble_test_acc)
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "model_name": study_name, "version": version, "champion": champion}


def _move_champion(client: PatientClient, name: str, version: str, test_acc: float) -> bool:
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        current = None
    if current is not None:
        best = client.get_run(current.run_id).data.metrics.get("ensemble_test_acc", -1.0)
        if test_acc <= best:
            return False
    client.set_registered_model_alias(name, "champion", version)
    return True


def load_registered(tracking_uri: str, name: str, alias: str = "champion") -> Any:
    """The registered ensemble of a study as a torch module (the champion by default)."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pytorch.load_model(f"models:/{name}@{alias}", map_location="cpu")
    except MlflowException as exc:
        raise SweeperError(
            f"export: no registered ensemble '{name}@{alias}' in {tracking_uri} "
            f"({first_line(exc)}); "
            f"run `sweeper ensemble {name}` first"
        ) from None


def download_registered(tracking_uri: str, name: str, out: Path, alias: str = "champion") -> Path:
    """Copy the registered MLflow model directory of a study's ensemble to `out`."""
    import mlflow
    import mlflow.artifacts

    mlflow.set_tracking_uri(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    path = mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}", dst_path=str(out))
    return Path(path)


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def latest_run(tracking_uri: str, study_name: str, kind: str) -> Run | None:
    """The newest run of a study tagged sweeper.kind == kind ("launch", "ensemble"), or None."""
    client = PatientClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`sweeper.kind` = '{kind}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    return next((run for run in runs if run.data.tags.get("sweeper.study") == study_name), None)


def metric_histories(
    tracking_uri: str, run_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) pairs in step order; a step logged twice keeps its last value."""
    client = PatientClient(tracking_uri)
    histories: dict[str, list[tuple[int, float]]] = {}
    for key in keys:
        by_step: dict[int, float] = {}
        for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_step[metric.step] = metric.value
        histories[key] = sorted(by_step.items())
    return histories


def ensemble_table(tracking_uri: str, run: Run) -> Any:
    """The member table (ensemble_members.json) of an ensemble run, as a pandas DataFrame."""
    import pandas as pd

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a one-file download
    client = PatientClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, "ensemble_members.json", dst_path=tmp)
        table = json.loads(Path(path).read_text())
    return pd.DataFrame(table["data"], columns=table["columns"])


def log_report(
    tracking_uri: str, run_id: str, paths: Sequence[Path], folder: str = "report"
) -> None:
    """Attach report files (HTML, CSV) to a run, under `folder/` of its artifacts."""
    client = PatientClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), folder)
