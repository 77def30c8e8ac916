"""`sweeper worker`: inside one worker process, claim trials of the study and train them until
the budget is spent. Imported only by worker processes: it loads torch and MLflow. It shares
with its launcher only what pool.interface holds (the launch context, the exit codes)."""

from __future__ import annotations

import os
import socket
import sys
import time
import zlib
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from sweeper.ensemble.plan import load_member_study
from sweeper.errors import first_line
from sweeper.interrupt import EXIT_INTERRUPTED, STOPPING, stop_on_signals
from sweeper.pool.interface import EXIT_GAVE_UP, LaunchContext
from sweeper.records import RETRY_OF_SYSTEM_ATTR, Attr, Kind, Tag
from sweeper.spec.budget import Budget, budget_state
from sweeper.spec.stopping import StopRule
from sweeper.spec.study import Study, load_study
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage, note_limits
from sweeper.stores.tracking import TrialTracker, experiment_for
from sweeper.training.data import prefetch_data
from sweeper.worker.objective import Objective

MAX_FAILURES_IN_A_ROW = 5  # then the cause is the setup (a full disk), not the trials


def join(
    study_file: str,
    directory: str,
    *,
    storage: str | None,
    tracking_uri: str | None,
    from_launcher: bool,
    ensemble: bool,
    device: str,
    worker: str | None,
    budget: int | None,
    timeout: float | None,
    deadline: float | None,
    overrides: dict[str, Any],
    packed: bool,
) -> int:
    """Train trials of a launched study (or its ensemble members). A launcher's worker loads
    torch and MLflow while its launcher opens the study, then reads the launch context on
    stdin, the stores' URLs with it."""
    spec = load_study(study_file)
    context = LaunchContext.read(sys.stdin) if from_launcher else LaunchContext()
    paths = SweepPaths.existing(
        directory, context.storage_url or storage, context.tracking_uri or tracking_uri
    )  # never creates
    if not from_launcher:  # the launcher did these once for its workers
        note_limits(paths.storage_url)
        prefetch_data(spec.fixed, overrides)  # a size the data cannot hold: one line, no trial
    tags = None
    if ensemble:
        spec = load_member_study(spec, make_storage(paths.storage_url))
        tags = {Tag.KIND: Kind.MEMBER}
    timeout = timeout or spec.timeout
    worker = worker or f"{socket.gethostname()}-{os.getpid()}"
    if os.environ.get("SWEEPER_NODE"):  # on a Ray node: say where (the launcher names the node)
        print(f"sweeper: worker {worker} runs on {socket.gethostname()}, {device}",
              file=sys.stderr, flush=True)  # fmt: skip
    return run_worker(
        spec, paths, device=device, worker=worker,
        experiment_id=context.experiment_id, parent_run_id=context.parent_run_id,
        budget=budget if budget is not None else spec.trials,
        deadline=deadline or (time.time() + timeout if timeout else None),
        overrides=overrides, tags=tags, packed=packed, keep=context.keep,
    )  # fmt: skip


def run_worker(
    spec: Study,
    paths: SweepPaths,
    *,
    device: str,
    worker: str,
    experiment_id: str | None,
    parent_run_id: str | None,
    budget: int | None,
    deadline: float | None,
    overrides: dict[str, Any],
    tags: dict[str, str] | None = None,
    packed: bool = False,
    keep: int | None = None,
) -> int:
    """Run trials until the budget is spent or the deadline passes; return an exit code."""
    stop_on_signals()
    storage = make_storage(paths.storage_url)
    study = load_stored_study(spec.name, storage, paths.storage_url, pruner=spec.make_pruner())
    # Seeded by worker and by what the study holds: a relaunched or replaced worker must not
    # draw the configs that its previous self drew (interrupted trials are retried, not redrawn).
    drawn = len(study.get_trials(deepcopy=False))
    study.sampler = spec.make_sampler(zlib.crc32(f"{worker}/{drawn}".encode()))
    if experiment_id is None:
        experiment_id = experiment_for(paths.tracking_uri, spec.name, paths.artifact_root)
    objective = Objective(
        spec=spec,
        checkpoint_dir=paths.checkpoints(spec.name),
        tracker=TrialTracker(paths.tracking_uri, experiment_id, parent_run_id),
        worker=worker,
        device=device,
        overrides=overrides,
        budget=budget,
        tags=tags or {},
        lock_dir=paths.locks,
        packed=packed,
        keep=keep,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _train_trials(study, objective, budget, deadline, spec.stop_rule)
    except KeyboardInterrupt:
        _requeue_interrupted(study, worker)
        return EXIT_INTERRUPTED
    except optuna.exceptions.StorageInternalError as error:  # cut off while creating a trial
        cause = first_line(error.__cause__ or error)
        print(f"sweeper: worker {worker} lost the storage ({cause}); the launcher starts another",
              file=sys.stderr)  # fmt: skip
        return 1


def _train_trials(
    study: optuna.Study,
    objective: Objective,
    budget: int | None,
    deadline: float | None,
    stop: StopRule | None = None,
) -> int:
    """Claim and train trials one at a time while the budget and the deadline allow."""
    while deadline is None or time.time() < deadline:
        if STOPPING.is_set():  # the interrupt was caught and turned into another error
            raise KeyboardInterrupt
        fail_stale_trials(study)
        state = budget_state(study, budget, stop)
        if state == Budget.DONE:
            break
        if state == Budget.WAIT:  # a running trial may yet die and come back to be retried
            time.sleep(2.0)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except ValueError:  # Optuna cannot record the end of a trial that is no longer RUNNING
            if not objective.taken_over:
                raise
        if objective.taken_over:
            print(f"sweeper: worker {objective.worker}: {objective.taken_over}", file=sys.stderr)
        if objective.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            print(
                f"sweeper: error: worker {objective.worker} stops: {objective.failures_in_a_row}"
                f" trials in a row failed; the last: {objective.last_failure}",
                file=sys.stderr,
            )
            return EXIT_GAVE_UP
    return 0


def _requeue_interrupted(study: optuna.Study, worker: str) -> None:
    """A trial stopped by Ctrl-C is failed by Optuna; queue its retry, which resumes it."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=None)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get(Attr.WORKER) == worker and trial.user_attrs.get(Attr.INTERRUPTED):
            retried = {
                t.system_attrs.get(RETRY_OF_SYSTEM_ATTR) for t in study.get_trials(deepcopy=False)
            }
            if trial.number not in retried:
                retry(study, trial)
