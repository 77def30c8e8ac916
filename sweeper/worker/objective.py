"""One Optuna trial: config from the study, training with pruning, checkpoints and tracking."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from sweeper.interrupt import STOPPING
from sweeper.records import Attr, Tag, best_file_name, epoch_file_name
from sweeper.spec.budget import counted_trials
from sweeper.spec.history import sampler_name
from sweeper.spec.objectives import behind_the_median, maximizing, measure_costs
from sweeper.spec.study import Study
from sweeper.stores.storage import backend_of
from sweeper.stores.tracking import TrialTracker
from sweeper.training.batches import PaceCallback
from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData, split_of
from sweeper.training.loop import (
    EpochCallback,
    TrainResult,
    TrainState,
    predict_arrays,
    resolved,
    train,
)
from sweeper.training.models.custom import BuilderError
from sweeper.worker.checkpoints import (
    CheckpointError,
    drop_files,
    load_newest,
    save_atomic,
    save_best,
)
from sweeper.worker.gpuslot import gpu_slot

# The machine a trial ran on: the Ray node id a Ray worker is given (sweeper/ray_pool.py), else
# the host name.
NODE = os.environ.get("SWEEPER_NODE") or socket.gethostname()


class TrialDiverged(Exception):
    """The loss became NaN or inf: the trial fails with this reason and the sweep goes on."""


class SurplusTrial(Exception):
    """Another worker claimed the last trial of the budget at the same moment."""


class TrialTakenOver(Exception):
    """The trial is no longer RUNNING in the storage: the other workers called this one dead
    (a network partition) and its retry trains on in the same MLflow run. This worker stops the
    trial and touches neither its checkpoints nor its run."""


# Known causes of a failed trial, whose message says it all (no traceback)
ONE_LINE_FAILURES = (TrialDiverged, SurplusTrial, CheckpointError, BuilderError)


class _OneLineFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback; for these known causes the line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if STOPPING.is_set():  # an interrupted trial: the launcher says in one line what was kept
            return False
        if record.exc_info and isinstance(record.exc_info[1], TrialTakenOver):
            return False  # the worker says it in its own line
        if record.exc_info and isinstance(record.exc_info[1], ONE_LINE_FAILURES):
            record.exc_info = None
        return True


# A logger's filters see only the records logged on that very logger, not those of its children:
# the filter goes on the logger that logs failed trials.
logging.getLogger("optuna.study._optimize").addFilter(_OneLineFailures())


def earlier_tries(trial: optuna.Trial) -> list[int]:
    """The numbers of a retried trial's earlier tries, the first first (none for a first try)."""
    # what the trial was created with, as Optuna's own fixed_params are read
    return RetryHeartbeatStaleTrialCallback.retry_history(trial._cached_frozen_trial)


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Several user attributes at once: one storage transaction where the storage can."""
    backend = backend_of(trial.storage)
    if not hasattr(backend, "set_trial_user_attrs"):  # the gRPC proxy's client
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    backend.set_trial_user_attrs(trial._trial_id, attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what trial.user_attrs reads


def still_running(trial: optuna.Trial) -> bool:
    """Whether the storage still holds the trial as RUNNING (one read of its state)."""
    backend = backend_of(trial.storage)
    if hasattr(backend, "trial_state"):
        return backend.trial_state(trial._trial_id) == optuna.trial.TrialState.RUNNING
    return trial.storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING


@dataclass
class Objective:
    """Callable by study.optimize in a worker process."""

    spec: Study  # the study file's (or the ensemble's member study)
    checkpoint_dir: Path
    tracker: TrialTracker
    worker: str
    device: str
    overrides: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    lock_dir: Path = Path("locks")
    packed: bool = False  # several trials share this GPU
    keep: int | None = None  # best weights stored only for a trial that ends in the top `keep`
    failures_in_a_row: int = 0
    last_failure: str = ""
    taken_over: str = ""  # why the last trial was taken over by its retry (see TrialTakenOver)
    kept_floor: tuple[float, int] | None = None  # the `keep`-th best ranking key last counted

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.taken_over = ""
        self._check_budget(trial)
        try:
            value = self._run(trial)
        except optuna.TrialPruned:
            self.failures_in_a_row = 0
            raise
        except TrialTakenOver as error:
            self.taken_over = str(error)
            raise
        except BaseException as error:
            if STOPPING.is_set():  # also cut before its training began: its retry runs it
                self._mark_interrupted(trial)
                raise KeyboardInterrupt from None
            if isinstance(error, Exception):
                self.failures_in_a_row += 1
                self.last_failure = str(error) or repr(error)
            raise
        self.failures_in_a_row = 0
        return value

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        config = resolved(self.spec.trial_config(trial, {**self.overrides, "device": self.device}))
        data = split_of(config)
        # Each try checkpoints to its own file: a try called dead that trains on cannot overwrite
        # what its retry resumed from. A retry resumes from the newest earlier try that saved one.
        last = self.epoch_file(trial.number)
        earlier = [self.epoch_file(number) for number in earlier_tries(trial)]
        resume = load_newest(earlier[::-1])
        run_id = self._start_run(trial, config, data)
        sampler = sampler_name(trial.study.sampler)
        attrs = {Attr.MLFLOW_RUN_ID: run_id, Attr.WORKER: self.worker, Attr.NODE: NODE,
                 Attr.SAMPLER: sampler, Attr.CONFIG: config.to_dict()}  # fmt: skip
        if resume is not None:
            attrs[Attr.RESUMED_FROM_EPOCH] = resume["epoch"]
        set_user_attrs(trial, attrs)
        if resume is not None:
            self._replay(trial, run_id, resume["history"])
        pruned = False

        def on_epoch(metrics: dict[str, float], state: TrainState) -> bool:
            nonlocal pruned
            self._check_running(trial)
            save_atomic({**state.state_dict(), "config": config.to_dict()}, last)
            epoch, value = int(metrics["epoch"]), metrics[self.spec.metric]
            self.tracker.log_epoch(run_id, metrics, epoch)
            # after the last epoch there is nothing left to save: the trial completes
            pruned = epoch < config.epochs and self._should_prune(trial, epoch, value)
            return pruned

        def on_pace(pace: dict[str, float]) -> None:  # for the launcher's bar: 1 or 2 writes
            with contextlib.suppress(Exception):  # a figure to show: training goes on without
                trial.set_user_attr(Attr.PACE, {**pace, "device": self.device})

        try:
            result = self._train(trial, config, data, (on_epoch, on_pace), resume, last)
            self._check_running(trial)
            return self._finish(trial, run_id, config, data, result, pruned, [last, *earlier])
        except (optuna.TrialPruned, TrialTakenOver):
            raise
        except BaseException as exc:
            # A library may turn the interrupt into another error (torch.save into RuntimeError):
            # whatever was raised, a trial cut by Ctrl-C or SIGTERM resumes on the next launch.
            if STOPPING.is_set():
                self._interrupted(trial, run_id)
                raise KeyboardInterrupt from None
            reason = str(exc) if isinstance(exc, ONE_LINE_FAILURES) else repr(exc)
            self._fail(trial, run_id, reason)
            drop_files([last, *earlier])
            raise

    def _should_prune(self, trial: optuna.Trial, epoch: int, value: float) -> bool:
        """The study's pruner on the metric; with several objectives, whose trials cannot
        report(), the median rule on the first one over the curves the trials keep."""
        if not self.spec.costs:
            trial.report(value, epoch)
            return trial.should_prune()
        curve = {**trial.user_attrs.get(Attr.CURVE, {}), str(epoch): value}
        trial.set_user_attr(Attr.CURVE, curve)
        if self.spec.pruner == "none":
            return False
        return behind_the_median(trial.study, trial.number, epoch, value)

    def _start_run(self, trial: optuna.Trial, config: TrainConfig, data: SplitData) -> str:
        """The trial's MLflow run: new, or the run of the try it retries (see TrialTracker)."""
        tags = {
            **self.tags,
            Tag.WORKER: self.worker,
            Tag.DEVICE: self.device,
            Tag.HOST: socket.gethostname(),
            Tag.NODE: NODE,
            Tag.SEED: str(config.seed),
            Tag.SPLIT_HASH: data.split_hash,
            Tag.STUDY_FILE_HASH: self.spec.file_hash,
        }
        return self.tracker.start(
            self.spec.name, trial.number, config.to_dict(), tags,
            run_id=trial.user_attrs.get(Attr.MLFLOW_RUN_ID),
            run_name=trial.user_attrs.get(Attr.RUN_NAME),  # an ensemble member's, see ensemble.plan
        )  # fmt: skip

    def epoch_file(self, number: int) -> Path:
        """The epoch checkpoint of the try numbered `number` of a trial."""
        return self.checkpoint_dir / epoch_file_name(number)

    @staticmethod
    def _check_running(trial: optuna.Trial) -> None:
        if not still_running(trial):
            raise TrialTakenOver(
                f"trial {trial.number} is no longer RUNNING in the storage (this worker was"
                " called dead and the trial retried): stopped; its checkpoints and MLflow run are"
                " left to the retry"
            )

    def _train(
        self,
        trial: optuna.Trial,
        config: TrainConfig,
        data: SplitData,
        callbacks: tuple[EpochCallback, PaceCallback],
        resume: dict[str, Any] | None,
        last: Path,
    ) -> TrainResult:
        """Train on a share of the GPU; out of memory while packed: again, alone, from `last`."""
        on_epoch, on_pace = callbacks
        try:
            with gpu_slot(self.lock_dir, self.device):
                return train(config, data, callback=on_epoch, resume=resume, pace=on_pace)
        except torch.cuda.OutOfMemoryError:
            if not self.packed:
                raise
        finally:  # a packed worker's cached memory must not stay in the way of the next trial
            if self.packed:
                torch.cuda.empty_cache()
        trial.set_user_attr(Attr.OOM_RETRIED_ALONE, True)
        resume = load_newest([last]) or resume
        with gpu_slot(self.lock_dir, self.device, exclusive=True):
            return train(config, data, callback=on_epoch, resume=resume, pace=on_pace)

    def _finish(
        self,
        trial: optuna.Trial,
        run_id: str,
        config: TrainConfig,
        data: SplitData,
        result: TrainResult,
        pruned: bool,
        epoch_files: list[Path],
    ) -> float | list[float]:
        outcome = {Attr.TRAIN_STATUS: result.status, Attr.BEST_EPOCH: result.best_epoch,
                   Attr.EPOCHS_RUN: len(result.history)}  # fmt: skip
        if result.status == "diverged":
            set_user_attrs(trial, outcome)
            raise TrialDiverged(
                f"diverged: the loss became NaN or inf in epoch {len(result.history) + 1}"
            )
        value = None if pruned else float(result.history[result.best_epoch - 1][self.spec.metric])
        best = self.checkpoint_dir / best_file_name(trial.number)
        stored = self._may_stay(trial, value)
        if stored:
            save_best(best, result, config, data)
        predictions = result.val_predictions  # None when the best epoch came before a resume
        if predictions is None:
            predictions = predict_arrays(result, data.val_x, config.eval_batch_size).argmax(1)
        summary = {"best_val_acc": result.best_val_acc or 0.0, "best_epoch": result.best_epoch or 0}
        costs = {}  # accuracy against cost: measured on the best weights, logged with the summary
        if self.spec.costs and not pruned:
            costs = measure_costs(result.model, result.device, tuple(data.val_x.shape[1:]),
                                  result.history, self.spec.costs)  # fmt: skip
            summary.update(costs)
        logged = self.tracker.finish(run_id, "PRUNED" if pruned else "COMPLETE",
                                     classes=data.classes, val_labels=data.val_y,
                                     val_predictions=predictions.cpu().numpy().astype(np.int64),
                                     checkpoint=best if stored else None,
                                     summary=summary)  # fmt: skip
        # One copy of the best weights: the run's artifact; the local file only if logging failed.
        if stored:
            outcome[Attr.CHECKPOINT] = logged or str(best)
        set_user_attrs(trial, {**outcome, **({Attr.COSTS: costs} if costs else {})})
        drop_files([best, *epoch_files] if logged or not stored else epoch_files)
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        return [value, *(costs[name] for name in self.spec.costs)] if costs else value

    def _may_stay(self, trial: optuna.Trial, value: float | None) -> bool:
        """Whether the trial's best weights may be kept (see sweep.retention): it ends in the
        top `keep` by the metric, or the study also weighs costs (its Pareto front stays too).
        A pruned trial, or one that ends behind `keep` others (better, or as good and earlier),
        never gets back in: its weights would be uploaded only to be deleted."""
        if self.keep is None or len(trial.study.directions) > 1:
            return True
        if value is None:
            return False
        sign = 1 if maximizing(trial.study) else -1
        key = (sign * value, -trial.number)  # ties rank by number, as retention's
        # A complete trial stays complete: the `keep` ahead at the last count are ahead still,
        # so only a trial that beats them counts again (at 10,000 trials a count is 10 ms).
        if self.kept_floor is None or key > self.kept_floor:
            complete = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            top = heapq.nlargest(self.keep, ((sign * t.values[0], -t.number) for t in complete))
            self.kept_floor = top[-1] if len(top) == self.keep else None
        return self.kept_floor is None or key > self.kept_floor

    def _fail(self, trial: optuna.Trial, run_id: str, reason: str) -> None:
        """Record why the trial failed, on the trial and on its run, and end the run FAILED."""
        trial.set_user_attr(Attr.FAIL_REASON, reason[:500])
        self.tracker.finish(run_id, "FAIL", reason=reason)

    def _interrupted(self, trial: optuna.Trial, run_id: str) -> None:
        """Mark the trial for its retry, which resumes from its last checkpoint and run."""
        trial.set_user_attr(Attr.INTERRUPTED, True)
        # Best effort, and quiet: the retry reopens the run anyway. The interrupt may have cut
        # a write to the MLflow store, whose lock this one then waits out, and MLflow logs the
        # "database is locked" it gets with a traceback; the launcher says in one line what
        # was kept.
        store_log = logging.getLogger("mlflow.store.db.utils")
        level = store_log.level
        store_log.setLevel(logging.CRITICAL)
        try:
            with contextlib.suppress(Exception):
                self.tracker.finish(run_id, "FAIL", reason="interrupted; resumes on next launch")
        finally:
            store_log.setLevel(level)

    def _mark_interrupted(self, trial: optuna.Trial) -> None:
        """Whenever Ctrl-C or SIGTERM cut the trial, this worker queues its retry (loop.py)."""
        marks = {Attr.WORKER: self.worker, Attr.INTERRUPTED: True}
        for key, value in marks.items():
            if trial.user_attrs.get(key) != value:
                trial.set_user_attr(key, value)

    def _replay(self, trial: optuna.Trial, run_id: str, history: list[dict[str, float]]) -> None:
        """A resumed trial re-reports the epochs of its first try, to Optuna and to MLflow."""
        logged = self.tracker.logged_epochs(run_id)
        for metrics in history:
            epoch = int(metrics["epoch"])
            trial.report(metrics[self.spec.metric], epoch)
            if epoch not in logged:
                self.tracker.log_epoch(run_id, metrics, epoch)

    def _check_budget(self, trial: optuna.Trial) -> None:
        # fewer trials than its number came before it: below the budget, no read of them all
        if self.budget is None or trial.number < self.budget:
            return
        earlier = [
            t
            for t in counted_trials(trial.study)
            if t.number < trial.number and t.state != optuna.trial.TrialState.FAIL
        ]
        if len(earlier) >= self.budget:
            trial.set_user_attr(Attr.SURPLUS, True)
            raise SurplusTrial("the trial budget was already claimed by other trials")
