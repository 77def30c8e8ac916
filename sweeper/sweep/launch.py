"""`sweeper launch` end to end.

Check the study and its data, start the workers, open the Optuna study and the MLflow launch
run while they load, sweep, build the seed ensemble, end the run. Data flows one way: study
file -> launch -> pool -> worker -> objective -> training loop; tracking records; the ensemble
reads what the sweep stored. `spec` is the study file's Study; `study` the Optuna study.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper.errors import first_line
from sweeper.interrupt import EXIT_INTERRUPTED, stop_on_signals
from sweeper.pool.interface import LaunchContext, Pool
from sweeper.records import StudyAttr, Tag
from sweeper.spec.budget import Budget, budget_state, counted_trials
from sweeper.spec.objectives import best_by_metric, metric_value
from sweeper.spec.study import Study, open_study
from sweeper.spec.warmstart import enqueue_warm_start
from sweeper.stores import sqlite_wal
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.stores.storage import make_storage, note_limits
from sweeper.sweep.ensemble import build_ensemble
from sweeper.sweep.phase import Opened, Work, run_phase, stopped, worker_commands, worker_flags
from sweeper.training.data import prefetch_data


def launch(
    spec: Study,
    paths: SweepPaths,
    pool: Pool,
    *,
    budget: int | None,
    timeout: float | None,
    overrides: dict[str, Any],
    progress: bool = True,
    ensemble: dict[str, Any] | None = None,
) -> int:
    """Sweep the study on the pool's workers, then build its ensemble; return an exit code."""
    stop_on_signals()
    note_limits(paths.storage_url)
    prefetch_data(spec.fixed, overrides)  # milliseconds once cached; a missing dataset fails here
    started, deadline = time.time(), time.time() + timeout if timeout else None
    opened: Opened | None = None

    def setup() -> tuple[optuna.Study, LaunchContext]:
        nonlocal opened
        opened = open_launch(spec, paths, len(pool.devices), kept_top(ensemble))
        return opened.study, opened.context

    ended: dict[str, str] = {}  # tags of the launch run that say how it ended
    status = "FAILED"
    try:
        flags = worker_flags(pool, budget, deadline, overrides)
        commands = worker_commands(spec.file, paths, pool.devices, flags)
        work = Work(budget, deadline, spec.stop_rule)
        if not run_phase(pool, commands, setup, work, progress=progress,
                         figures=lambda *a, **k: opened.tend(*a, **k)):  # fmt: skip
            status = "KILLED"
            print(stopped(opened.study, budget, "trials"), file=sys.stderr)
            return EXIT_INTERRUPTED
        built = None  # an ensemble.finish.EnsembleResult, once built
        if why := stopped_early(spec, opened.study):
            ended[Tag.STOPPED_BECAUSE] = why
            print(f"sweeper: the sweep stops early: {why}")
        done = budget_state(opened.study, budget, spec.stop_rule) == Budget.DONE
        if ensemble and ensemble.get("k") and done:
            built = build_ensemble(spec, paths, opened, pool, overrides=overrides,
                                   progress=progress, settings=ensemble)  # fmt: skip
            if built is None:
                status = "KILLED"
                return EXIT_INTERRUPTED
        from sweeper.report.render import write_report  # pandas and plotly: only now

        status, study, freeing = "FINISHED", opened.study, opened.freeing
        end_run(paths, opened, status, ended)  # before the report, which shows it ended
        opened = None  # nothing left for `finally` to end
        files, _ = write_report(spec.name, paths, study=study)
        freed = free_disk(spec, paths, freeing, study)
        print_summary(spec, study, paths, built, files[0], time.time() - started, freed)
        return 0
    finally:
        end_run(paths, opened, status, ended)
        sqlite_wal.close_all()  # the logs into the store files: the command ends with os._exit


def end_run(paths: SweepPaths, opened: Opened | None, status: str, tags: dict[str, str]) -> None:
    """End the launch run, if the launch got as far as making it."""
    if opened is not None:
        from sweeper.stores import tracking  # already loaded by open_launch

        tracking.end_run(paths.tracking_uri, opened.context.parent_run_id, status, tags)


def open_launch(spec: Study, paths: SweepPaths, workers: int, keep: int) -> Opened:
    """The Optuna study (its warm start queued) and the MLflow launch run, made while the
    workers load torch; the best weights of all but the top `keep` trials go as they end."""
    from sweeper.stores import tracking  # MLflow loads here, while the workers start
    from sweeper.stores.tracking.figures import FigureDrawer
    from sweeper.sweep.retention import FreeingWhileRunning

    storage = make_storage(paths.storage_url)
    study = open_study(spec, storage)
    for line in enqueue_warm_start(spec, study, storage, paths.storage_url):
        print(line)
    study.set_user_attr(StudyAttr.STUDY_FILE, spec.file)
    study.set_user_attr(StudyAttr.STUDY_FILE_HASH, spec.file_hash)
    experiment_id = tracking.experiment_for(paths.tracking_uri, spec.name, paths.artifact_root)
    tags = {Tag.STUDY_FILE_HASH: spec.file_hash, Tag.WORKERS: str(workers)}
    run_id = tracking.start_launch_run(paths.tracking_uri, experiment_id, spec.name, tags)
    context = LaunchContext(experiment_id, run_id, paths.storage_url, paths.tracking_uri, keep)
    preload_the_end()
    drawer, freeing = FigureDrawer(paths.tracking_uri), FreeingWhileRunning(storage, paths, keep)
    return Opened(study, context, drawer, freeing)


def preload_the_end() -> None:
    """Load what the launcher needs later (matplotlib for the trials' figures, pandas and plotly
    for the report) now: its workers still import torch, and a core would sit idle."""
    import matplotlib.figure  # noqa: F401
    import optuna.visualization  # noqa: F401
    import plotly.express  # noqa: F401

    import sweeper.report.render  # noqa: F401


def stopped_early(spec: Study, study: optuna.Study) -> str | None:
    """Why the study's stop rule ended the sweep, or None."""
    rule = spec.stop_rule
    return rule.reason(study, counted_trials(study)) if rule else None


def kept_top(ensemble: dict[str, Any] | None) -> int:
    """How many of the top trials keep their best weights: enough for the ensemble."""
    from sweeper.sweep.retention import KEEP

    return max(KEEP, (ensemble or {}).get("k") or 0)


def free_disk(spec: Study, paths: SweepPaths, freeing: Any, study: optuna.Study) -> str:
    """Delete the checkpoints that the top trials and the ensemble do not need (`sweeper gc`),
    but for the best weights that went while the sweep ran (`freeing`, a FreeingWhileRunning);
    say how much that freed in all. A sweep that ended well still ends well if this fails.
    `study`: as the launcher holds it, whose cached trials a new storage would read again (10,000
    of them: seconds, and a third of a GB at the launcher's end)."""
    from sweeper.sweep import retention  # MLflow: already loaded by setup()

    keep = freeing.keep
    try:
        removed = retention.sweep_disk(study._storage, spec.name, paths, keep, done=freeing.freed)
    except Exception as error:
        return f"nothing freed ({first_line(error)}); try `sweeper gc {spec.name}`"
    removed += freeing.removed
    return f"{retention.describe(removed)}; the best weights of the top {keep} trials stay"


def print_summary(
    spec: Study, study: optuna.Study, paths: SweepPaths, ensemble: Any, report: Path,
    seconds: float, freed: str = "",
) -> None:  # fmt: skip
    """What the launch found, where its files are, and how to look at the runs."""
    show = (lambda v: f"{v:.2%}") if spec.metric == "val_acc" else (lambda v: f"{v:.4f}")
    lines = [f"sweeper: {spec.name} done in {seconds // 60:.0f} min {seconds % 60:.0f} s"]
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = best_by_metric(study)
        reference = spec.reference and f" ({spec.reference[1]}: {show(spec.reference[0])})"
        lines.append(f"  best trial {best.number}: {spec.metric} {show(metric_value(best))}"
                     f"{reference or ''}")  # fmt: skip
    if spec.costs and (front := study.best_trials):
        trials = ", ".join(str(t.number) for t in sorted(front, key=lambda t: t.number))
        lines.append(f"  Pareto front of {spec.metric} against {', '.join(spec.costs)}:"
                     f" trials {trials} (the report draws it)")  # fmt: skip
    if ensemble is not None:
        lines.append(f"  ensemble of {ensemble.members} members: test accuracy"
                     f" {ensemble.report.ensemble_test_acc:.2%},"
                     f" {100 * ensemble.report.gain:+.2f} points over its best member")  # fmt: skip
        lines.append(f"  exported: {' and '.join(str(p) for p in ensemble.exports)}")
    lines.append(f"  report: {report}")
    local = paths.tracking_uri == default_tracking_uri(paths.dir)
    lines.append(f"  MLflow UI: sweeper ui --dir {shlex.quote(str(paths.dir))}" if local
                 else f"  MLflow: {paths.tracking_uri}")  # fmt: skip
    if freed:
        lines.append(f"  disk: {freed}")
    print("\n".join(lines))
