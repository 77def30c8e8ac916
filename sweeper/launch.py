"""`sweeper launch` end to end, and the set-up that `sweeper ensemble` and `sweeper worker` share.

Check the study and its data, start the workers, open the Optuna study and the MLflow launch
run while they load, sweep, build the seed ensemble, end the run. Data flows one way: study
file -> launch -> pool -> worker -> trial -> train; tracking records; the ensemble reads what
the sweep stored.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from sweeper.data import load_images
from sweeper.errors import first_line
from sweeper.objectives import best_by_metric, metric_value
from sweeper.paths import SweepPaths, default_tracking_uri
from sweeper.pool import (
    Budget,
    LaunchContext,
    Remote,
    budget_state,
    run_pool,
    stop_on_signals,
    worker_commands,
    worker_flags,
)
from sweeper.storage import (
    counted_trials,
    load_stored_study,
    make_storage,
    note_limits,
    open_study,
)
from sweeper.study import Study, load_by_name_or_file, load_study
from sweeper.warmstart import enqueue_warm_start

if TYPE_CHECKING:
    from sweeper.tracking.figures import FigureDrawer


def launch(
    study: Study,
    paths: SweepPaths,
    *,
    devices: list[str],
    budget: int | None,
    timeout: float | None,
    overrides: dict[str, Any],
    progress: bool = True,
    ensemble: dict[str, Any] | None = None,
    remote: Remote | None = None,
) -> int:
    """Sweep the study on a pool of workers (local processes, or `remote` ones on a cluster),
    then build its ensemble; return an exit code."""
    stop_on_signals()
    note_limits(paths.storage_url)
    prefetch_data(study, overrides)  # milliseconds once cached; a missing dataset fails here
    started, deadline = time.time(), time.time() + timeout if timeout else None
    opened: Opened | None = None

    def setup() -> tuple[optuna.Study, LaunchContext]:
        nonlocal opened
        opened = open_launch(study, paths, len(devices))
        return opened.study, opened.context

    status = "FAILED"
    ended: dict[str, str] = {}  # tags of the launch run that say how it ended
    try:
        flags = worker_flags(devices, budget, deadline, overrides, remote)
        if not run_pool(worker_commands(study.file, paths, devices, flags), setup, budget=budget,
                        deadline=deadline, progress=progress, stop=study.stop_rule,
                        remote=remote, each_poll=lambda found: opened.figures(found)):  # fmt: skip
            status = "KILLED"
            print(stopped(opened.study, budget, "trials"), file=sys.stderr)
            return 130
        built = None
        if why := stopped_early(study, opened.study):
            ended["sweeper.stopped_because"] = why
            print(f"sweeper: the sweep stops early: {why}")
        done = budget_state(opened.study, budget, study.stop_rule) == Budget.DONE
        if ensemble and ensemble.get("k") and done:
            built = build_ensemble(
                study, paths, opened, devices=devices,
                overrides=overrides, progress=progress, settings=ensemble, remote=remote,
            )  # fmt: skip
            if built is None:
                status = "KILLED"
                return 130
        from sweeper.report import write_report  # pandas and plotly: only now

        files, _ = write_report(study.name, paths)
        status = "FINISHED"
        freed = free_disk(study, paths, ensemble)
        print_summary(study, opened.study, paths, built, files[0], time.time() - started, freed)
        return 0
    finally:
        if opened is not None:
            from sweeper import tracking  # already loaded by setup()

            tracking.end_run(paths.tracking_uri, opened.context.parent_run_id, status, ended)


def open_launch(study: Study, paths: SweepPaths, workers: int) -> Opened:
    """The Optuna study (its warm start queued) and the MLflow launch run, made while the
    workers load torch."""
    from sweeper import tracking  # MLflow loads here, while the workers start

    storage = make_storage(paths.storage_url)
    optuna_study = open_study(study, storage)
    for line in enqueue_warm_start(study, optuna_study, storage, paths.storage_url):
        print(line)
    optuna_study.set_user_attr("study_file", study.file)
    optuna_study.set_user_attr("study_file_hash", study.file_hash)
    experiment_id = tracking.experiment_for(paths.tracking_uri, study.name, paths.artifact_root)
    tags = {"sweeper.study_file_hash": study.file_hash, "sweeper.workers": str(workers)}
    run_id = tracking.start_launch_run(paths.tracking_uri, experiment_id, study.name, tags)
    context = LaunchContext(experiment_id, run_id, paths.storage_url, paths.tracking_uri)
    from sweeper.tracking.figures import FigureDrawer

    preload_the_end()
    return Opened(optuna_study, context, FigureDrawer(paths.tracking_uri))


def preload_the_end() -> None:
    """Load what the launcher needs later (matplotlib for the trials' figures, pandas and plotly
    for the report) now: its workers still import torch, and a core would sit idle."""
    import matplotlib.figure  # noqa: F401
    import optuna.visualization  # noqa: F401
    import plotly.express  # noqa: F401

    import sweeper.report  # noqa: F401


def stopped_early(study: Study, optuna_study: optuna.Study) -> str | None:
    """Why the study's stop rule ended the sweep, or None."""
    rule = study.stop_rule
    return rule.reason(optuna_study, counted_trials(optuna_study)) if rule else None


def stopped(optuna_study: optuna.Study, budget: int | None, what: str) -> str:
    """The one line of a launch stopped by Ctrl-C: what was kept and how to go on."""
    trials = optuna_study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    again = shlex.join(["sweeper", *sys.argv[1:]])
    resumed = f"; the {waiting} cut short resume from their last epoch" if waiting else ""
    return (f"sweeper: stopped; {done}{f' of {budget}' if budget else ''} {what} done and kept"
            f"{resumed}; go on with: {again}")  # fmt: skip


def free_disk(study: Study, paths: SweepPaths, ensemble: dict[str, Any] | None) -> str:
    """Delete the checkpoints that the top trials and the ensemble do not need (`sweeper gc`);
    say how much that freed. A sweep that ended well still ends well if this fails."""
    from sweeper import retention  # MLflow: already loaded by setup()

    keep = max(retention.KEEP, (ensemble or {}).get("k") or 0)
    try:
        removed = retention.sweep_disk(make_storage(paths.storage_url), study.name, paths, keep)
    except Exception as error:
        return f"nothing freed ({first_line(error)}); try `sweeper gc {study.name}`"
    return f"{retention.describe(removed)}; the best weights of the top {keep} trials stay"


def print_summary(
    study: Study, optuna_study: optuna.Study, paths: SweepPaths, ensemble: dict[str, Any] | None,
    report: Path, seconds: float, freed: str = "",
) -> None:  # fmt: skip
    """What the launch found, where its files are, and how to look at the runs."""
    show = (lambda v: f"{v:.2%}") if study.metric == "val_acc" else (lambda v: f"{v:.4f}")
    lines = [f"sweeper: {study.name} done in {seconds // 60:.0f} min {seconds % 60:.0f} s"]
    if any(t.state == TrialState.COMPLETE for t in optuna_study.get_trials(deepcopy=False)):
        best = best_by_metric(optuna_study)
        reference = study.reference and f" ({study.reference[1]}: {show(study.reference[0])})"
        lines.append(f"  best trial {best.number}: {study.metric} {show(metric_value(best))}"
                     f"{reference or ''}")  # fmt: skip
    if study.costs and (front := optuna_study.best_trials):
        trials = ", ".join(str(t.number) for t in sorted(front, key=lambda t: t.number))
        lines.append(f"  Pareto front of {study.metric} against {', '.join(study.costs)}:"
                     f" trials {trials} (the report draws it)")  # fmt: skip
    if ensemble is not None:
        report_ = ensemble["report"]
        lines.append(f"  ensemble of {ensemble['members']} members: test accuracy"
                     f" {report_.ensemble_test_acc:.2%}, {100 * report_.gain:+.2f} points over"
                     " its best member")  # fmt: skip
        lines.append(f"  exported: {' and '.join(str(p) for p in ensemble['exports'])}")
    lines.append(f"  report: {report}")
    local = paths.tracking_uri == default_tracking_uri(paths.dir)
    lines.append(f"  MLflow UI: sweeper ui --dir {shlex.quote(str(paths.dir))}" if local
                 else f"  MLflow: {paths.tracking_uri}")  # fmt: skip
    if freed:
        lines.append(f"  disk: {freed}")
    print("\n".join(lines))


@dataclass
class Opened:
    """What a launch opened while its workers started."""

    study: optuna.Study
    context: LaunchContext
    figures: FigureDrawer  # draws finished trials' figures while the launcher waits


def build_ensemble(
    study: Study,
    paths: SweepPaths,
    opened: Opened,
    *,
    devices: list[str],
    overrides: dict[str, Any],
    progress: bool,
    settings: dict[str, Any],
    remote: Remote | None = None,
) -> dict[str, Any] | None:
    """Plan the ensemble, retrain its members on the pool, evaluate, log, register and export it;
    None if interrupted."""
    from sweeper import retrain  # torch and MLflow: the launcher needs them only from here on

    optuna_study, context = opened.study, opened.context

    options = retrain.EnsembleSettings(**settings)
    plan = retrain.make_plan(optuna_study, options.k, options.seeds, options.pick)
    epochs = options.epochs or max(config["epochs"] for config in plan.configs.values())
    spec = retrain.member_study(study, plan, epochs)  # by default the sources' epoch budget
    member_overrides = {key: v for key, v in overrides.items() if key != "epochs"}
    storage = make_storage(paths.storage_url)
    members = retrain.open_member_study(spec, storage, optuna_study, plan, member_overrides,
                                        paths.tracking_uri)  # fmt: skip
    kept = len(members.trials) - len(members.get_trials(states=(TrialState.WAITING,)))
    short = len(plan.sources) < options.k
    print(
        f"ensemble: trials {plan.sources} with seeds {plan.seeds}, {epochs} epochs"
        + (f" (only {len(plan.sources)} distinct complete configs)" if short else "")
        + (f"; {kept} of the members are their source trials as trained" if kept else "")
    )
    flags = ["--ensemble", *worker_flags(devices, spec.trials, None, member_overrides, remote)]
    commands = worker_commands(spec.file, paths, devices, flags)
    if not run_pool(commands, lambda: (members, context), budget=spec.trials, deadline=None,
                    progress=progress, table=False, remote=remote,
                    each_poll=opened.figures):  # fmt: skip
        print(stopped(members, spec.trials, "ensemble members"), file=sys.stderr)
        return None
    if budget_state(members, spec.trials) != Budget.DONE:
        print("ensemble: some members did not finish; building from those that did")
    local = remote is None and devices[0].startswith("cuda")  # a cluster's GPUs are not here
    device = devices[0] if local else "cpu"
    return retrain.finish_ensemble(study, paths, members, plan, context.experiment_id,
                                   context.parent_run_id, options.greedy, device)  # fmt: skip


def ensemble_again(
    target: str, paths: SweepPaths, *, devices: list[str], settings: dict[str, Any],
    overrides: dict[str, Any], progress: bool, remote: Remote | None = None,
) -> int:  # fmt: skip
    """`sweeper ensemble`: the ensemble of a launched study, outside a launch run."""
    from sweeper import tracking  # loaded on demand: the CLI stays quick

    stop_on_signals()
    note_limits(paths.storage_url)
    study = study_from_name_or_file(target, paths)
    optuna_study = open_study(study, make_storage(paths.storage_url))
    experiment_id = tracking.experiment_for(paths.tracking_uri, study.name, paths.artifact_root)
    context = LaunchContext(experiment_id, None, paths.storage_url, paths.tracking_uri)
    from sweeper.tracking.figures import FigureDrawer

    opened = Opened(optuna_study, context, FigureDrawer(paths.tracking_uri))
    done = build_ensemble(study, paths, opened, devices=devices, overrides=overrides,
                          progress=progress, settings={**study.ensemble, **settings},
                          remote=remote)  # fmt: skip
    return 0 if done is not None else 130


def join(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """`sweeper worker`: train trials of a launched study (or its ensemble members). A
    launcher's worker loads torch and MLflow while its launcher opens the study, then reads the
    launch context on stdin, the stores' URLs with it."""
    from sweeper import retrain  # torch and MLflow: workers only
    from sweeper.worker import run_worker

    study = load_study(args.study)
    context = LaunchContext.read(sys.stdin) if args.from_launcher else LaunchContext()
    paths = SweepPaths.existing(
        args.dir, context.storage_url or args.storage, context.tracking_uri or args.tracking_uri
    )  # never creates
    if not args.from_launcher:  # the launcher said it once for its workers
        note_limits(paths.storage_url)
    tags = None
    if args.ensemble:
        study = retrain.load_member_study(study, make_storage(paths.storage_url))
        tags = {"sweeper.kind": retrain.MEMBER_KIND}
    timeout = args.timeout or study.timeout
    deadline = args.deadline or (time.time() + timeout if timeout else None)
    return run_worker(
        study, paths, device=args.device,
        worker=args.worker_name or f"{socket.gethostname()}-{os.getpid()}",
        experiment_id=context.experiment_id, parent_run_id=context.parent_run_id,
        budget=args.trials if args.trials is not None else study.trials, deadline=deadline,
        overrides=overrides, tags=tags, packed=args.packed,
    )  # fmt: skip


def study_from_name_or_file(target: str, paths: SweepPaths) -> Study:
    """A study file, or the file a launched study was started from."""
    study, name = load_by_name_or_file(target)
    if study is not None:
        return study
    stored = load_stored_study(name, make_storage(paths.storage_url), paths.storage_url)
    return load_study(stored.user_attrs["study_file"])


def prefetch_data(study: Study, overrides: dict[str, Any]) -> None:
    """Decode the dataset once here, so the workers all start from the cache."""
    values = {**study.fixed, **overrides}
    load_images(values.get("dataset", "cifar10"), values.get("data_dir"), values.get("image_size"))
