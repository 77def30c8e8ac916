"""What a sweep keeps on disk: a real launch of studies/quickstart.py, then `sweeper gc`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART, Store, sweeper_here
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState, create_trial

from sweeper.records import Attr, best_file_name
from sweeper.stores import tracking
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.sweep.retention import FreeingWhileRunning, describe, sweep_disk, top_trials

TINY = ["--epochs", "1", "--train-size", "300", "--val-size", "500",
        "--no-progress", "--no-ensemble"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> tuple[Path, Store, str]:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    storage = Store("sqlite", f"sqlite:///{sweep_dir / 'optuna.db'}", ())
    done = sweeper_here("launch", QUICKSTART, "--dir", str(sweep_dir), "--data-dir",
                        str(datasets_dir), "--trials", "8", "--workers", "1", *TINY)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, storage, done.stdout


def stored(sweep_dir: Path, trial: optuna.trial.FrozenTrial) -> int | None:
    return tracking.checkpoint_size(default_tracking_uri(sweep_dir), trial.user_attrs["checkpoint"])


@pytest.mark.e2e
def test_a_launch_keeps_one_copy_of_the_top_trials_best_weights(
    swept: tuple[Path, Store, str],
) -> None:
    sweep_dir, storage, out = swept
    study = storage.load()
    top = {t.number for t in top_trials(study, 3)}
    assert len(top) == 3
    for trial in study.trials:  # one worker: trials end in the order of their numbers
        ahead = [t for t in study.trials[: trial.number] if t.value >= trial.value]
        if len(ahead) >= 3:  # behind the top 3 when it ended: its worker stored no weights
            assert "checkpoint" not in trial.user_attrs, trial.number
            continue
        assert trial.user_attrs["checkpoint"].startswith("runs:/")  # the run's artifact, once
        assert (stored(sweep_dir, trial) is not None) == (trial.number in top), trial.number
    assert any("checkpoint" not in t.user_attrs for t in study.trials), "none ended behind 3"
    assert list((sweep_dir / "checkpoints" / "quickstart").iterdir()) == []  # no local copies
    kept = sum(stored(sweep_dir, t) for t in study.trials if t.number in top)
    on_disk = sum(f.stat().st_size for f in sweep_dir.rglob("*.pt"))  # artifacts included
    assert on_disk == kept, "8 trials leave the top 3 trials' best weights and nothing more"
    assert "  disk: freed " in out and "the best weights of the top 3 trials stay" in out


@pytest.mark.e2e
def test_gc_deletes_what_the_rule_does_not_keep_and_says_how_much(
    swept: tuple[Path, Store, str],
) -> None:
    sweep_dir, storage, _ = swept
    study = storage.load()
    folder = sweep_dir / "checkpoints" / "quickstart"
    ended = folder / f"trial-{study.trials[0].number}-last.pt"  # left by a worker killed mid-write
    ended.write_bytes(b"x" * 1000)
    # A trial whose worker died and whose retry waits: its epoch checkpoint must stay.
    x = {"x": FloatDistribution(0.0, 1.0)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions=x))
    dead = study.trials[-1]
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, dead)
    resumes = folder / f"trial-{dead.number}-last.pt"
    resumes.write_bytes(b"y" * 500)
    best = study.best_trial
    others = [t for t in top_trials(study, 3) if t.number != best.number]
    sizes = sum(stored(sweep_dir, t) for t in others) + 1000

    dry = sweeper_here("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would delete") == 3, dry.stdout
    assert dry.stdout.strip().endswith(f"would free {sizes / 1e6:.1f} MB in 3 file(s)")
    assert ended.exists() and all(stored(sweep_dir, t) for t in others)

    done = sweeper_here("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("deleted ") for line in lines[:3]), lines
    assert str(ended) in done.stdout
    assert lines[-1] == f"sweeper gc quickstart: freed {sizes / 1e6:.1f} MB in 3 file(s)"
    assert not ended.exists() and resumes.exists()
    weighed = [t for t in study.trials if "checkpoint" in t.user_attrs]
    assert [t.number for t in weighed if stored(sweep_dir, t)] == [best.number]
    again = sweeper_here("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1")
    assert again.stdout.strip() == "sweeper gc quickstart: freed 0.0 MB in 0 file(s)"


@pytest.mark.e2e
def test_gc_of_an_unknown_study_or_a_bad_keep_is_one_line(swept: tuple[Path, Store, str]) -> None:
    sweep_dir, _, _ = swept
    for args, text in (
        (["nosuch"], "no study 'nosuch'"),
        (["quickstart", "--keep", "-1"], "--keep"),
    ):
        done = sweeper_here("gc", *args, "--dir", str(sweep_dir))
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and text in done.stderr


def local_study(
    tmp_path: Path,
) -> tuple[optuna.storages.BaseStorage, optuna.Study, SweepPaths, Path]:
    """A study "s" in memory, and the sweep folder with its (empty) checkpoint folder."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    paths = SweepPaths(tmp_path, "", default_tracking_uri(tmp_path), None)
    folder = paths.checkpoints("s")
    folder.mkdir(parents=True)
    return storage, study, paths, folder


def test_the_rule_on_local_files_keeps_what_may_resume_and_the_top(tmp_path: Path) -> None:
    """sweep_disk without a launch: best weights named by local paths (as when logging them
    failed), epoch checkpoints of finished and resumable tries, files of killed workers."""
    storage, study, paths, folder = local_study(tmp_path)
    lr = {"lr": FloatDistribution(0, 1)}
    for number, value in enumerate([0.5, 0.9, 0.7, 0.6]):
        best = folder / best_file_name(number)
        best.write_bytes(b"w" * 100)
        attrs = {Attr.CHECKPOINT: str(best)}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"lr": value},
                                     distributions=lr, user_attrs=attrs))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL))  # 4: its worker died; retried by 5
    retry = create_trial(state=TrialState.RUNNING, system_attrs={"failed_trial": 4,
                         "retry_history": [4]})  # fmt: skip
    study.add_trial(retry)
    for name in ("trial-4-last.pt", "trial-5-last.pt", "trial-1-last.pt", "trial-9-best.pt",
                 "notes.txt"):  # fmt: skip
        (folder / name).write_bytes(b"x" * 10)
    dry = sweep_disk(storage, "s", paths, keep=2, dry_run=True)
    assert all((folder / p).exists() for p in ("trial-0-best.pt", "trial-9-best.pt"))
    removed = sweep_disk(storage, "s", paths, keep=2)
    assert [r.what for r in removed] == [r.what for r in dry]
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["notes.txt", "trial-1-best.pt", "trial-2-best.pt", "trial-4-last.pt",
                    "trial-5-last.pt"]  # fmt: skip
    assert sum(r.size for r in removed) == 100 + 100 + 10 + 10  # 0 and 3, 1-last, 9-best
    assert describe(removed) == "freed 0.0 MB in 4 file(s)"


def test_best_weights_go_while_the_sweep_runs_as_trials_leave_the_top(tmp_path: Path) -> None:
    """FreeingWhileRunning at the launcher's polls: a complete or pruned trial outside the top
    `keep` loses its best weights once; failed ones (a retry may run) wait for the end, and the
    end's pass does not count again what already went."""
    storage, study, paths, folder = local_study(tmp_path)
    lr = {"lr": FloatDistribution(0, 1)}

    def ended(state: TrialState, value: float | None) -> None:
        best = folder / best_file_name(len(study.trials))
        best.write_bytes(b"w" * 100)
        attrs = {Attr.CHECKPOINT: str(best)}
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1},
                                     distributions=lr, user_attrs=attrs))  # fmt: skip

    def left() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    freeing = FreeingWhileRunning(storage, paths, keep=2, every_s=0)
    for value in (0.5, 0.7):
        ended(TrialState.COMPLETE, value)
    freeing(study, study.trials)
    assert left() == ["trial-0-best.pt", "trial-1-best.pt"]  # the top 2 so far
    ended(TrialState.COMPLETE, 0.9)  # 2 pushes 0 out of the top
    ended(TrialState.PRUNED, None)  # 3
    ended(TrialState.FAIL, None)  # 4: its retry may resume it
    freeing.budget_s = 0  # one trial a call, the next poll goes on
    freeing(study, study.trials)
    assert left() == ["trial-1-best.pt", "trial-2-best.pt", "trial-3-best.pt", "trial-4-best.pt"]
    freeing(study, study.trials)
    assert left() == ["trial-1-best.pt", "trial-2-best.pt", "trial-4-best.pt"]
    assert freeing.freed == {0, 3} and [r.size for r in freeing.removed] == [100, 100]
    removed = sweep_disk(storage, "s", paths, keep=2, done=freeing.freed)
    assert [r.what for r in removed] == [f"best weights of trial 4: {folder / 'trial-4-best.pt'}"]


def test_a_later_pass_looks_again_only_at_new_trials_and_those_that_left_the_top(
    tmp_path: Path,
) -> None:
    """A whole pass records how far it went (StudyAttr.FREED): the end of the next launch of a
    study of 10,000 trials does not list 10,000 runs' artifacts again."""
    storage, study, paths, folder = local_study(tmp_path)
    lr = {"lr": FloatDistribution(0, 1)}

    def ended(value: float, state: TrialState = TrialState.COMPLETE) -> Path:
        best = folder / best_file_name(len(study.trials))
        best.write_bytes(b"w" * 100)
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1}, distributions=lr,
                                     user_attrs={Attr.CHECKPOINT: str(best)}))  # fmt: skip
        return best

    first = [ended(v) for v in (0.5, 0.9, 0.7, 0.6)]
    study.add_trial(create_trial(state=TrialState.RUNNING))  # 4: the pass stops before it
    assert len(sweep_disk(storage, "s", paths, keep=2, dry_run=True)) == 2
    assert "freed" not in study.user_attrs  # a dry run records nothing
    assert len(sweep_disk(storage, "s", paths, keep=2)) == 2  # 0 and 3
    assert study.user_attrs["freed"] == {"through": 3, "kept": [1, 2]}
    first[0].write_bytes(b"w" * 100)  # were 0 looked at again, this would go
    ended(0.95)  # 5 pushes 2 out of the top
    removed = sweep_disk(storage, "s", paths, keep=2)
    assert [r.what for r in removed] == [f"best weights of trial 2: {first[2]}"]
    assert first[0].exists()
    freeing = FreeingWhileRunning(storage, paths, keep=2, every_s=0)
    freeing(study, study.trials)  # a later launch's polls start where the passes stopped
    assert {0, 3} <= freeing.freed and first[0].exists()


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_worker_stores_weights_only_in_the_top_and_counts_again_only_for_one_that_beats_it(
    direction: str,
) -> None:
    from sweeper.worker.objective import Objective

    objective = Objective(spec=None, checkpoint_dir=Path(), tracker=None, worker="w",
                          device="cpu", keep=3)  # fmt: skip
    study = optuna.create_study(direction=direction)
    reads = []
    real = study.get_trials
    study.get_trials = lambda *a, **k: reads.append(1) or real(*a, **k)
    sign = 1 if direction == "maximize" else -1
    values = [0.5, 0.5, 0.4, 0.6, 0.5, 0.6, 0.3, 0.7, 0.5, 0.6, 0.6, 0.8, 0.2, 0.1, 0.7, 0.9, 0.4]
    for value in [sign * v for v in values]:  # ties on purpose: they rank by number
        trial = study.ask()
        complete = real(states=(TrialState.COMPLETE,))
        ahead = [t for t in complete if sign * t.value >= sign * value]  # all have lower numbers
        assert objective._may_stay(trial, value) == (len(ahead) < 3), (trial.number, value)
        study.tell(trial, value)
    assert objective._may_stay(study.ask(), None) is False  # pruned
    assert 0 < len(reads) < len(values) - 3  # a trial behind the last count reads nothing
