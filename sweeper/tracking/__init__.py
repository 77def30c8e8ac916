"""Everything MLflow, by concern: the patient client, runs, plots, the Model Registry and the
queries that reports read (as pandas DataFrames).

The only package that imports mlflow. Every call names its tracking URI and run id explicitly
(no global tracking URI, no fluent active run), so worker processes log in parallel.
"""

from sweeper.tracking.client import PatientClient, is_transient
from sweeper.tracking.plots import confusion_matrix, learning_curve
from sweeper.tracking.queries import (
    ensemble_table,
    latest_run,
    log_report,
    metric_histories,
    runs_frame,
    runs_of_study,
)
from sweeper.tracking.registry import download_registered, load_registered, log_ensemble
from sweeper.tracking.runs import (
    CONFIG_FILE,
    TrialTracker,
    end_run,
    experiment_for,
    run_config,
    start_launch_run,
)

__all__ = [
    "CONFIG_FILE",
    "PatientClient",
    "TrialTracker",
    "confusion_matrix",
    "download_registered",
    "end_run",
    "ensemble_table",
    "experiment_for",
    "is_transient",
    "latest_run",
    "learning_curve",
    "load_registered",
    "log_ensemble",
    "log_report",
    "metric_histories",
    "run_config",
    "runs_frame",
    "runs_of_study",
    "start_launch_run",
]
