"""What a sweep keeps on disk: the best weights of the top trials, of the ensemble's sources and
of its members, and the epoch checkpoints of trials that may yet resume. The rest goes: the
best weights of finished trials while the sweep runs, everything else at the end of each launch
and on `sweeper gc`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sweeper.records import CHECKPOINT_FILE, Attr, StudyAttr, best_file_name, member_study_name
from sweeper.spec.objectives import ranked
from sweeper.stores import tracking
from sweeper.stores.paths import SweepPaths
from sweeper.stores.tracking import queries
from sweeper.stores.tracking.checkpoints import reference

KEEP = 3  # best weights of this many top trials stay (with the ensemble's sources and members)


@dataclass
class Removed:
    """A file or artifact that was deleted (or would be, on a dry run)."""

    what: str
    size: int


def sweep_disk(
    storage: BaseStorage,
    name: str,
    paths: SweepPaths,
    keep: int = KEEP,
    dry_run: bool = False,
    done: set[int] = frozenset(),
) -> list[Removed]:
    """Delete what the study `name` and its ensemble no longer need; return what went. `done`:
    trials whose best weights already went (FreeingWhileRunning's)."""
    study = optuna.load_study(study_name=name, storage=storage)
    studies = {name: study.get_trials(deepcopy=False)}
    sources, members = ensemble_trials(storage, name)
    if members is not None:
        studies[member_study_name(name)] = members  # all of them kept
    kept = kept_numbers(study, studies[name], keep) | sources
    passed = kept | set(done) | freed_before(study)
    due = [t for t in studies[name] if t.number not in passed and _may_hold_weights(t)]
    uris = _artifact_uris(paths.tracking_uri, name, due)
    removed = []
    for trial in due:
        removed += _best_weights(trial, paths.tracking_uri, dry_run, uris)
    for study_name, trials in studies.items():
        removed += _stale_files(paths.checkpoints(study_name), trials, dry_run)
    if not dry_run:
        _record_freed(study, studies[name], kept)
    return removed


def freed_before(study: optuna.Study) -> set[int]:
    """The trials whose best weights an earlier whole pass freed: the next launch of a study of
    10,000 trials looks again at none of them (MLflow reads 10,000 runs in minutes)."""
    record = study.user_attrs.get(StudyAttr.FREED) or {"through": -1, "kept": []}
    return set(range(record["through"] + 1)) - set(record["kept"])


def _record_freed(study: optuna.Study, trials: list[FrozenTrial], kept: set[int]) -> None:
    """Remember how far this pass went: up to the first trial that has not ended (it and those
    after it are for a later pass), and which of those it kept."""
    through = next((t.number for t in trials if not t.state.is_finished()), len(trials)) - 1
    if through >= 0:
        shown = sorted(n for n in kept if n <= through)
        study.set_user_attr(StudyAttr.FREED, {"through": through, "kept": shown})


def top_trials(study: optuna.Study, keep: int) -> list[FrozenTrial]:
    """The `keep` best complete trials by the objective."""
    return ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study)[:keep]


def kept_numbers(study: optuna.Study, trials: list[FrozenTrial], keep: int) -> set[int]:
    """The trials whose best weights stay: the top `keep`, and in a study scored on cost its
    Pareto front too (for export --pick)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    kept = {trial.number for trial in ranked(complete, study)[:keep]}
    if len(study.directions) > 1:
        kept |= {trial.number for trial in study.best_trials}
    return kept


def ensemble_trials(storage: BaseStorage, name: str) -> tuple[set[int], list[FrozenTrial] | None]:
    """The trial numbers an ensemble of the study was built from, and its members' trials (None
    where it has none yet)."""
    members = member_study_name(name)
    if members not in [s.study_name for s in storage.get_all_studies()]:
        return set(), None
    ensemble = optuna.load_study(study_name=members, storage=storage)
    sources = set(ensemble.user_attrs.get(StudyAttr.PLAN, {}).get("sources", []))
    return sources, ensemble.get_trials(deepcopy=False)


@dataclass
class FreeingWhileRunning:
    """Called at the launcher's polls while the sweep runs: the best weights of complete and
    pruned trials outside the top `keep` go, so a sweep of thousands of trials holds a few on
    disk, and its end has little left to do. A trial that left the top never comes back to it,
    so each is looked at once. Every `every_s` at most, for at most `budget_s` (the next call
    goes on), so the launcher's polls stay light; the artifact folders of up to `batch` trials
    come from one search of their runs (MLflow would read each run twice to find it). Failed
    trials wait for the end: a retry of theirs may still run."""

    storage: BaseStorage
    paths: SweepPaths
    keep: int
    every_s: float = 2.0
    budget_s: float = 0.5
    batch: int = 100
    freed: set[int] = field(default_factory=set)  # trial numbers looked at
    removed: list[Removed] = field(default_factory=list)
    sources: set[int] | None = None  # of an ensemble built before this launch
    last_s: float = -math.inf

    def __call__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        started = time.monotonic()
        if started - self.last_s < self.every_s:
            return
        self.last_s = started
        if self.sources is None:
            self.sources = ensemble_trials(self.storage, study.study_name)[0]
            self.freed |= freed_before(study)  # by an earlier launch
        passed = kept_numbers(study, trials, self.keep) | self.sources | self.freed
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        due = [t for t in trials if t.state in finished and t.number not in passed]
        due = [t for t in due if _may_hold_weights(t)][: self.batch]
        if not due:
            return
        uris = _artifact_uris(self.paths.tracking_uri, study.study_name, due)
        for trial in due:
            self.freed.add(trial.number)
            self.removed += _best_weights(trial, self.paths.tracking_uri, False, uris)
            if time.monotonic() - started > self.budget_s:
                return


def _may_hold_weights(trial: FrozenTrial) -> bool:
    """A finished trial that may have stored best weights: one that names them, or one that
    failed (it may have logged them first). A complete or pruned trial that names none ended
    outside the top, and its worker stored none (Objective._may_stay)."""
    return trial.state == TrialState.FAIL or (
        trial.state.is_finished() and Attr.CHECKPOINT in trial.user_attrs
    )


def _artifact_uris(tracking_uri: str, name: str, trials: list[FrozenTrial]) -> dict[str, str]:
    """Run id -> artifact URI of the trials' runs, from searches of those runs only (MLflow would
    read each run to find it, and a search of all reads every param and tag of thousands)."""
    runs = [t.user_attrs[Attr.MLFLOW_RUN_ID] for t in trials if Attr.MLFLOW_RUN_ID in t.user_attrs]
    found, _ = queries.runs_by_id(tracking_uri, name, runs)
    return dict(zip(found["run_id"], found["artifact_uri"], strict=True))


def _best_weights(
    trial: FrozenTrial, tracking_uri: str, dry_run: bool, uris: dict[str, str]
) -> list[Removed]:
    """The trial's best weights: what its `checkpoint` names, and the artifact that sweepers
    before one-copy logged beside a local file (`uris`: run id -> artifact URI)."""
    refs = {trial.user_attrs.get(Attr.CHECKPOINT)}
    if Attr.MLFLOW_RUN_ID in trial.user_attrs:
        file = Path(best_file_name(trial.number))
        refs.add(reference(trial.user_attrs[Attr.MLFLOW_RUN_ID], file))
    removed = []
    for ref in sorted(r for r in refs if r):
        uri = uris.get(ref.removeprefix("runs:/").split("/", 1)[0])
        size = tracking.checkpoint_size(tracking_uri, ref, uri)
        if size is not None:
            if not dry_run:
                tracking.delete_checkpoint(tracking_uri, ref, uri)
            removed.append(Removed(f"best weights of trial {trial.number}: {ref}", size))
    return removed


def _stale_files(folder: Path, trials: list[FrozenTrial], dry_run: bool) -> list[Removed]:
    """Epoch checkpoints of trials that ended for good (no retry of theirs is queued or running),
    and best-weights files left by a trial that logged them or died before it could."""
    by_number = {t.number: t for t in trials}
    resumable = set()
    for trial in trials:
        if not trial.state.is_finished():
            resumable.add(trial.number)
            resumable.update(RetryHeartbeatStaleTrialCallback.retry_history(trial))
    removed = []
    for file in sorted(folder.glob("trial-*-*.pt")):
        match = CHECKPOINT_FILE.fullmatch(file.name)
        if match is None or int(match[1]) in resumable:
            continue
        trial = by_number.get(int(match[1]))
        if trial is not None and trial.user_attrs.get(Attr.CHECKPOINT) == str(file):
            continue  # the one copy of a trial's best weights (logging them failed)
        removed.append(Removed(str(file), file.stat().st_size))
        if not dry_run:
            file.unlink(missing_ok=True)
    return removed


def describe(removed: list[Removed], dry_run: bool = False) -> str:
    """One line: how much was freed, in how many files."""
    total = sum(r.size for r in removed)
    verb = "would free" if dry_run else "freed"
    return f"{verb} {total / 1e6:.1f} MB in {len(removed)} file(s)"


def collect_garbage(storage: BaseStorage, name: str, paths: SweepPaths, keep: int,
                    dry_run: bool) -> None:  # fmt: skip
    """`sweeper gc`: delete (or with dry_run, list) what the study no longer needs, one line a
    file, then the total."""
    removed = sweep_disk(storage, name, paths, keep, dry_run)
    for item in removed:
        print(f"{'would delete' if dry_run else 'deleted'} {item.what} ({item.size / 1e6:.1f} MB)")
    print(f"sweeper gc {name}: {describe(removed, dry_run)}")
