"""What a sweep keeps on disk: a real launch of studies/quickstart.py, then `sweeper gc`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART, Store, sweeper
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState, create_trial

from sweeper import tracking
from sweeper.paths import default_tracking_uri
from sweeper.retention import top_trials

TINY = ["--epochs", "1", "--train-size", "300", "--no-progress", "--no-ensemble"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> tuple[Path, Store, str]:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    storage = Store("sqlite", f"sqlite:///{sweep_dir / 'optuna.db'}", ())
    done = sweeper("launch", QUICKSTART, "--dir", str(sweep_dir), "--data-dir", str(datasets_dir),
                   "--trials", "20", "--workers", "1", *TINY)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, storage, done.stdout


def stored(sweep_dir: Path, trial: optuna.trial.FrozenTrial) -> int | None:
    return tracking.checkpoint_size(default_tracking_uri(sweep_dir), trial.user_attrs["checkpoint"])


def test_a_launch_keeps_one_copy_of_the_top_trials_best_weights(
    swept: tuple[Path, Store, str],
) -> None:
    sweep_dir, storage, out = swept
    study = storage.load()
    top = {t.number for t in top_trials(study, 3)}
    assert len(top) == 3
    for trial in study.trials:
        assert trial.user_attrs["checkpoint"].startswith("runs:/")  # the run's artifact, once
        assert (stored(sweep_dir, trial) is not None) == (trial.number in top), trial.number
    assert list((sweep_dir / "checkpoints" / "quickstart").iterdir()) == []  # no local copies
    kept = sum(stored(sweep_dir, t) for t in study.trials if t.number in top)
    on_disk = sum(f.stat().st_size for f in sweep_dir.rglob("*.pt"))  # artifacts included
    assert on_disk == kept, "20 trials leave the top 3 trials' best weights and nothing more"
    assert "  disk: freed " in out and "the best weights of the top 3 trials stay" in out


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

    dry = sweeper("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would delete") == 3, dry.stdout
    assert dry.stdout.strip().endswith(f"would free {sizes / 1e6:.1f} MB in 3 file(s)")
    assert ended.exists() and all(stored(sweep_dir, t) for t in others)

    done = sweeper("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("deleted ") for line in lines[:3]), lines
    assert str(ended) in done.stdout
    assert lines[-1] == f"sweeper gc quickstart: freed {sizes / 1e6:.1f} MB in 3 file(s)"
    assert not ended.exists() and resumes.exists()
    weighed = [t for t in study.trials if "checkpoint" in t.user_attrs]
    assert [t.number for t in weighed if stored(sweep_dir, t)] == [best.number]
    again = sweeper("gc", "quickstart", "--dir", str(sweep_dir), "--keep", "1")
    assert again.stdout.strip() == "sweeper gc quickstart: freed 0.0 MB in 0 file(s)"


def test_gc_of_an_unknown_study_or_a_bad_keep_is_one_line(swept: tuple[Path, Store, str]) -> None:
    sweep_dir, _, _ = swept
    for args, text in (
        (["nosuch"], "no study 'nosuch'"),
        (["quickstart", "--keep", "-1"], "--keep"),
    ):
        done = sweeper("gc", *args, "--dir", str(sweep_dir))
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and text in done.stderr
