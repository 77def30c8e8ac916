"""sweeper: Optuna sweeps of image-classification CNNs, tracked in MLflow.

The public names: `from sweeper import Study, StudyData, TrainConfig, SweeperError, run_study,
StudyResult`. They load on first use, so that importing sweeper (as every command does) stays
quick.

Where things live (one concern a folder):
    spec/      what a study file declares: Study, objectives, budget, stop rule, warm start
    training/  one training run: TrainConfig, data, batches on the device, the loop, models/
    pool/      the worker pool: the interface launcher and workers share, local and Ray pools
    worker/    inside a worker process: the loop, the Optuna objective, checkpoints, GPU slots
    sweep/     the launcher: launch, each phase on the pool, progress, ensemble phase, retention
    ensemble/  best-of seed ensembles: the plan, the averaged model, its files and exports
    report/    reading a sweep: the collected study data, the HTML report, the MLflow UI
    stores/    where state lives: paths, Optuna storage and proxy, MLflow tracking, retries
    records.py the names of everything sweeper records; cli.py every command and flag
"""

from typing import Any

from sweeper.errors import SweeperError

__all__ = ["Study", "StudyData", "StudyResult", "SweeperError", "TrainConfig", "run_study"]
__version__ = "0.1.0"

_PUBLIC = {
    "Study": "sweeper.spec.study",
    "StudyData": "sweeper.report.studydata",
    "TrainConfig": "sweeper.training.config",
    "run_study": "sweeper.sweep.notebook",
    "StudyResult": "sweeper.sweep.notebook",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
