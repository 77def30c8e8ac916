"""The ensemble phase of a launch (and `sweeper ensemble`): plan the members, train them on the
pool as trials of the member study, then evaluate, register and export the ensemble."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from optuna.trial import TrialState

from sweeper.ensemble.plan import (
    EnsembleSettings,
    make_plan,
    member_study,
    open_member_study,
)
from sweeper.interrupt import EXIT_INTERRUPTED, stop_on_signals
from sweeper.pool.interface import LaunchContext, Pool
from sweeper.records import StudyAttr
from sweeper.spec.budget import Budget, budget_state
from sweeper.spec.study import Study, load_by_name_or_file, load_study, open_study
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage, note_limits
from sweeper.sweep.phase import Opened, Work, run_phase, stopped, worker_commands, worker_flags
from sweeper.training.data import prefetch_data


def build_ensemble(
    spec: Study,
    paths: SweepPaths,
    opened: Opened,
    pool: Pool,
    *,
    overrides: dict[str, Any],
    progress: bool,
    settings: dict[str, Any],
) -> Any:
    """Plan the ensemble, retrain its members on the pool, evaluate, log, register and export
    it; the EnsembleResult, or None if interrupted."""
    from sweeper.ensemble.finish import finish_ensemble  # torch: the launcher needs it from here

    options = EnsembleSettings(**settings)
    plan = make_plan(opened.study, options.k, options.seeds, options.pick)
    epochs = options.epochs or max(config["epochs"] for config in plan.configs.values())
    members_spec = member_study(spec, plan, epochs)  # by default the sources' epoch budget
    member_overrides = {key: v for key, v in overrides.items() if key != "epochs"}
    storage = make_storage(paths.storage_url)
    members = open_member_study(members_spec, storage, opened.study, plan, member_overrides,
                                paths.tracking_uri)  # fmt: skip
    kept = len(members.trials) - len(members.get_trials(states=(TrialState.WAITING,)))
    short = len(plan.sources) < options.k
    print(
        f"ensemble: trials {plan.sources} with seeds {plan.seeds}, {epochs} epochs"
        + (f" (only {len(plan.sources)} distinct complete configs)" if short else "")
        + (f"; {kept} of the members are their source trials as trained" if kept else "")
    )
    flags = ["--ensemble", *worker_flags(pool, members_spec.trials, None, member_overrides)]
    commands = worker_commands(members_spec.file, paths, pool.devices, flags)
    context = dataclasses.replace(opened.context, keep=None)  # every member keeps its weights
    if not run_phase(pool, commands, lambda: (members, context), Work(members_spec.trials),
                     progress=progress, table=False, figures=opened.figures):  # fmt: skip
        print(stopped(members, members_spec.trials, "ensemble members"), file=sys.stderr)
        return None
    if budget_state(members, members_spec.trials) != Budget.DONE:
        print("ensemble: some members did not finish; building from those that did")
    device = pool.devices[0] if pool.local and pool.devices[0].startswith("cuda") else "cpu"
    return finish_ensemble(spec, paths, members, plan, opened.context.experiment_id,
                           opened.context.parent_run_id, options.greedy, device)  # fmt: skip


def ensemble_again(
    target: str, paths: SweepPaths, pool: Pool, *, settings: dict[str, Any],
    overrides: dict[str, Any], progress: bool,
) -> int:  # fmt: skip
    """`sweeper ensemble`: the ensemble of a launched study, outside a launch run."""
    from sweeper.stores import tracking  # loaded on demand: the CLI stays quick
    from sweeper.stores.tracking.figures import FigureDrawer

    stop_on_signals()
    note_limits(paths.storage_url)
    spec = spec_from_name_or_file(target, paths)
    prefetch_data(spec.fixed, overrides)  # sizes given as flags that the data cannot hold: one line
    study = open_study(spec, make_storage(paths.storage_url))
    experiment_id = tracking.experiment_for(paths.tracking_uri, spec.name, paths.artifact_root)
    context = LaunchContext(experiment_id, None, paths.storage_url, paths.tracking_uri)
    opened = Opened(study, context, FigureDrawer(paths.tracking_uri))
    done = build_ensemble(spec, paths, opened, pool, overrides=overrides, progress=progress,
                          settings={**spec.ensemble, **settings})  # fmt: skip
    return 0 if done is not None else EXIT_INTERRUPTED


def spec_from_name_or_file(target: str, paths: SweepPaths) -> Study:
    """A study file, or the file a launched study was started from."""
    spec, name = load_by_name_or_file(target)
    if spec is not None:
        return spec
    stored = load_stored_study(name, make_storage(paths.storage_url), paths.storage_url)
    return load_study(stored.user_attrs[StudyAttr.STUDY_FILE])
