"""What a launch shows while it runs (sweep.progress.Progress) and `sweeper status`, read from a
real SQLite study whose trials carry what workers record. No training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweeper.records import Attr
from sweeper.sweep.progress import Progress, status_text


def sqlite_study(tmp_path: Path) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(study_name="vgg", storage=storage, direction="maximize")


def test_interrupted_trials_are_counted_apart_from_failed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sqlite_study(tmp_path)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.FAIL_REASON: "disk"}))
    for _ in range(2):  # cut by Ctrl-C; each has a retry waiting that resumes it
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.INTERRUPTED: True}))
        study.enqueue_trial({})
    progress = Progress(study, 6, enabled=False)
    progress.close()
    assert "failed=1, interrupted=2," in progress.bar.postfix
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == [
        "trial 0 COMPLETE value=0.6000",
        "trial 1 FAIL value=-",
        "trial 2 INTERRUPTED value=-",
        "trial 4 INTERRUPTED value=-",
    ]
    states = [row.split()[:2] for row in status_text(study, "text").splitlines()[1:]]
    assert sorted(states) == [["0", "COMPLETE"], ["1", "FAIL"], ["2", "INTERRUPTED"],
                              ["3", "WAITING"], ["4", "INTERRUPTED"], ["5", "WAITING"]]  # fmt: skip


def test_nothing_interrupted_shows_no_such_count(tmp_path: Path) -> None:
    study = sqlite_study(tmp_path)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.FAIL_REASON: "disk"}))
    progress = Progress(study, 2, enabled=False)
    progress.update()
    assert "failed=1" in progress.bar.postfix and "interrupted" not in progress.bar.postfix
