"""`sweeper.run_study`: the launch `sweeper launch` runs, called from Python (a notebook), and
what it found as objects to look at there."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.interrupt import EXIT_INTERRUPTED, STOPPING
from sweeper.records import Kind
from sweeper.spec.objectives import best_by_metric
from sweeper.spec.study import Study, load_study
from sweeper.spec.userfile import reference
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.stores.storage import load_stored_study, make_storage
from sweeper.sweep.launch import launch
from sweeper.sweep.progress import trials_table
from sweeper.training.config import TrainConfig


@dataclass
class StudyResult:
    """What a launch found: the trials, the best one, the ensemble, and where the files are."""

    name: str
    exit_code: int  # 0: done; 130: interrupted (running it again resumes it)
    trials: pd.DataFrame  # one row a trial, best first: `sweeper status`'s table
    best: FrozenTrial | None  # the best complete trial by the metric
    ensemble_test_acc: float | None  # the study's latest ensemble, on the test split
    exports: list[Path]  # that ensemble's TorchScript and ONNX files
    report: Path | None  # the HTML report
    ui: str  # the command that opens the MLflow UI on the runs

    def __repr__(self) -> str:
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        lines = [f"StudyResult {self.name!r} (exit code {self.exit_code}): {len(self.trials)}"
                 f" trials {states}"]  # fmt: skip
        if self.best is not None:
            lines.append(f"  best: trial {self.best.number}, value {self.best.values[0]:.4f},"
                         f" params {self.best.params}")  # fmt: skip
        if self.ensemble_test_acc is not None:
            lines.append(f"  ensemble test accuracy {self.ensemble_test_acc:.2%}")
        lines += [f"  exported: {p}" for p in self.exports]
        lines += [f"  report: {self.report}", f"  MLflow UI: {self.ui}"]
        return "\n".join(lines)


def run_study(
    study: str | Path | Study,
    *,
    workers: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    train_size: int | None = None,
    val_size: float | None = None,
    timeout: float | None = None,
    data_dir: str | Path | None = None,
    dir: str | Path = "sweeps",
    storage: str | None = None,
    tracking_uri: str | None = None,
    ensemble: bool = True,
    trials_per_gpu: int = 1,
    ray: str | None = None,
    progress: bool = True,
) -> StudyResult:
    """Run a study as `sweeper launch` does (the same flags, as keywords) and return what it
    found. `study` is a study file, or a Study whose space and functions live in importable
    files. Interrupting (Ctrl-C, the kernel's stop button) stops the workers and keeps their
    checkpoints: running it again resumes."""
    counts = {"workers": workers, "trials": trials, "epochs": epochs, "train_size": train_size,
              "trials_per_gpu": trials_per_gpu}  # fmt: skip
    for key, value in counts.items():
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise SweeperError(f"run_study: {key}={value!r}; give a whole number, 1 or more")
    if val_size is not None:  # else every trial would fail on it
        TrainConfig(val_size=val_size).validate("run_study")
    paths = SweepPaths.resolve(dir, storage or os.environ.get("SWEEPER_STORAGE"),
                               tracking_uri or os.environ.get("SWEEPER_TRACKING_URI"))  # fmt: skip
    spec = study_of(study, paths.dir)
    pool = pool_of(paths, ray, workers, trials_per_gpu)
    given = {"epochs": epochs, "train_size": train_size, "val_size": val_size,
             "data_dir": data_dir and str(data_dir)}  # fmt: skip
    overrides = {key: value for key, value in given.items() if value is not None}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = launch(
            spec, paths, pool, budget=trials if trials is not None else spec.trials,
            timeout=timeout if timeout is not None else spec.timeout, overrides=overrides,
            progress=progress, ensemble=spec.ensemble if ensemble else None,
        )  # fmt: skip
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:  # the notebook's own Ctrl-C back, and ready for the next run
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        STOPPING.clear()
    return result_of(spec.name, paths, code)


def pool_of(paths: SweepPaths, ray: str | None, workers: int | None, per_gpu: int) -> Any:
    """Where the workers run, chosen once: this machine, or a Ray cluster (--ray, ray=)."""
    from sweeper.pool import local
    from sweeper.pool import ray as ray_pool

    if ray is not None:
        return ray_pool.RayPool(paths, ray, workers, per_gpu)
    return local.LocalPool.of(workers, per_gpu)


def result_of(name: str, paths: SweepPaths, code: int = 0) -> StudyResult:
    """What the stores hold of a study: its trials, best trial, latest ensemble and files."""
    from sweeper.stores.tracking.queries import latest_run

    study = load_stored_study(name, make_storage(paths.storage_url), paths.storage_url)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    run = latest_run(paths.tracking_uri, name, Kind.ENSEMBLE)
    accuracy = None if run is None else run.get("metrics.ensemble_test_acc")
    exports = sorted((paths.dir / "exports" / name).glob("ensemble-v*"),
                     key=lambda p: (p.stat().st_mtime, p.suffix))  # fmt: skip
    report = paths.report(name, "evaluation")
    local = paths.tracking_uri == default_tracking_uri(paths.dir)
    return StudyResult(
        name=name, exit_code=code, trials=trials_table(study),
        best=best_by_metric(study) if complete else None,
        ensemble_test_acc=None if accuracy is None or pd.isna(accuracy) else float(accuracy),
        exports=exports[-2:], report=report if report.exists() else None,
        ui=f"sweeper ui --dir {paths.dir}" if local else f"mlflow ui at {paths.tracking_uri}",
    )  # fmt: skip


def study_of(study: str | Path | Study, sweep_dir: Path) -> Study:
    """A study file's Study; or a Study made in Python, written as a study file the workers load
    (its space and functions imported from where they live)."""
    if isinstance(study, str | Path):
        return load_study(study)
    if not isinstance(study, Study):
        raise SweeperError(f"run_study: got {type(study).__name__}; give a study file or a Study")
    if study.file:
        return load_study(study.file)
    fields = {f.name: getattr(study, f.name) for f in dataclasses.fields(Study)
              if f.name not in ("file", "file_hash")}  # fmt: skip
    body = ", ".join(f"{key}={_source(value, key)}" for key, value in fields.items())
    file_name = re.sub(r"[^\w.-]", "_", str(study.name))
    path = sweep_dir / "studies" / f"{file_name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '"""Written by sweeper.run_study for a Study made in Python: its workers load it."""\n\n'
        "from sweeper import Study\nfrom sweeper.spec.userfile import resolve\n\n"
        f"study = Study({body})\n"
    )
    return load_study(path)


def _source(value: Any, field: str) -> str:
    """A Python expression for a Study setting; functions by where they are defined."""
    if callable(value) and not isinstance(value, type):
        ref = reference(value, field)
        return f"resolve({ref!r}, {field!r})"
    if isinstance(value, dict):
        items = ", ".join(f"{k!r}: {_source(v, f'{field}.{k}')}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        items = ", ".join(_source(v, field) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if value else ''})"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise SweeperError(
        f"run_study: {field}={value!r} cannot reach the workers from a Study made in Python;"
        " give it by name (sampler='tpe' with sampler_options=...), or write the study in a file"
    )
