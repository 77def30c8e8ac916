"""Everything MLflow, by concern: the patient client, runs, the Model Registry and the queries
that reports read (as pandas DataFrames). The only package that imports mlflow; every call names
its tracking URI and run id (no global MLflow state), so worker processes log in parallel."""

from sweeper.stores.tracking.checkpoints import checkpoint_size, delete_checkpoint, fetch_checkpoint
from sweeper.stores.tracking.model import read_model, save_model
from sweeper.stores.tracking.queries import log_report, runs_of_study
from sweeper.stores.tracking.registry import load_registered, log_ensemble
from sweeper.stores.tracking.runs import (
    TrialTracker,
    end_run,
    experiment_for,
    experiment_to_show,
    run_config,
    start_launch_run,
)

__all__ = [
    "TrialTracker",
    "checkpoint_size",
    "delete_checkpoint",
    "end_run",
    "experiment_for",
    "experiment_to_show",
    "fetch_checkpoint",
    "load_registered",
    "log_ensemble",
    "log_report",
    "read_model",
    "run_config",
    "runs_of_study",
    "save_model",
    "start_launch_run",
]
