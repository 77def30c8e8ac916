"""What a launch shows while it runs (sweep.progress.Progress) and `sweeper status`, read from a
real SQLite study whose trials carry what workers record. No training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeper.records import Attr
from sweeper.stores.storage import make_storage
from sweeper.sweep.progress import Progress, duration, status_text, trials_frame, trials_table

HOUR = 3600.0


def sqlite_study(tmp_path: Path) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(study_name="vgg", storage=storage, direction="maximize")


def running(study: optuna.Study, epochs: int, pace: dict | None, reported: int = 0) -> optuna.Trial:
    """A trial as a worker leaves it while it trains: its config, its pace, its epochs."""
    trial = study.ask()
    trial.set_user_attr(Attr.CONFIG, {"model": "vgg16", "epochs": epochs})
    if pace is not None:
        trial.set_user_attr(Attr.PACE, pace)
    for epoch in range(1, reported + 1):
        trial.report(0.5, epoch)
    return trial


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


def test_a_slow_trial_shows_its_pace_and_the_sweep_says_once_how_to_shorten_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sqlite_study(tmp_path)
    progress = Progress(study, 60, enabled=False)
    trial = running(study, epochs=40, pace=None)
    progress.update()
    assert "running=#0:0/40," in progress.bar.postfix and "left" not in progress.bar.postfix
    assert capsys.readouterr().out == ""  # no pace yet, nothing to say
    trial.set_user_attr(Attr.PACE, {"images_per_s": 312.4, "epoch_s": 144.0, "device": "cpu"})
    progress.update()
    progress.update()  # said once
    postfix = progress.bar.postfix
    assert "running=#0:0/40@312img/s,2m24s/ep" in postfix
    assert "left=~96h" in postfix  # 60 trials of 40 epochs of 144 s on 1 worker
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "trial 0 pace: 312 images/s on cpu, 2 min 24 s an epoch, 1 h 36 min for 40 epochs"
    )
    assert out[1].startswith("sweeper: note: trial 0 trains at 312 images/s on cpu")
    assert "its 60 trials need about 96 h more on 1 worker here" in out[1]
    for lever in ("--epochs", "--train-size", "--trials", "a GPU"):
        assert lever in out[1]
    assert len(out) == 2


def test_the_time_left_counts_epochs_done_and_workers_and_a_short_sweep_says_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sqlite_study(tmp_path)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6))
    running(study, epochs=10, pace={"images_per_s": 2000.0, "epoch_s": 30.0}, reported=4)
    running(study, epochs=10, pace=None)  # not paced yet: as long as the mean paced trial
    progress = Progress(study, 5, enabled=False)
    progress.update()
    # (6 epochs left of 30 s) + (10 of 30 s) + 2 trials to start of 10 x 30 s, on 2 workers
    assert f"left=~{duration((180 + 300 + 600) / 2, short=True)}," in progress.bar.postfix
    assert "running=#1:4/10@2000img/s,30s/ep #2:0/10," in progress.bar.postfix
    assert "note" not in capsys.readouterr().out


def test_durations_read_as_hours_minutes_and_seconds() -> None:
    assert duration(0.4) == "0 s" and duration(45) == "45 s" and duration(144) == "2 min 24 s"
    assert duration(5760) == "1 h 36 min" and duration(96 * HOUR) == "96 h"
    assert duration(5760, short=True) == "1h36m" and duration(144, short=True) == "2m24s"


def test_a_poll_reads_the_trials_once_for_the_bar_and_the_best(tmp_path: Path) -> None:
    """The launcher's poll: one read of the trials; the bar's best and the figure drawer use it."""
    study = sqlite_study(tmp_path)
    for value in (0.4, 0.7, 0.5):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value))
    reads = []
    get_trials = study.get_trials
    study.get_trials = lambda *a, **k: reads.append(1) or get_trials(*a, **k)
    progress = Progress(study, 5, enabled=False)
    progress.update()
    assert len(reads) == 1
    assert [t.number for t in progress.trials] == [0, 1, 2]
    assert "best=0.7000 (#1)" in progress.bar.postfix


def test_status_of_a_long_study_shows_the_best_and_counts_all(tmp_path: Path) -> None:
    study = sqlite_study(tmp_path)
    for value in range(30):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value / 100))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.enqueue_trial({})
    lines = status_text(study, "text", top=5).splitlines()
    assert [row.split()[:3] for row in lines[1:6]] == [
        [str(n), "COMPLETE", f"{n / 100:g}"] for n in (29, 28, 27, 26, 25)
    ]
    assert lines[6] == ("... the best 5 of 32 trials (30 complete, 1 fail, 1 waiting); --top 0"
                        " shows all, --csv or --json every row")  # fmt: skip
    assert len(status_text(study, "text", top=0).splitlines()) == 33
    assert len(status_text(study, "csv", top=5).splitlines()) == 33


def test_status_of_the_best_reads_two_columns_of_all_and_the_best_trials_whole(
    tmp_path: Path,
) -> None:
    """On sweeper's storage `status` ranks an index of the trials (RetryingStorage.trial_index)
    and reads only the rows it shows, yet prints what the whole table says."""
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="vgg", direction="maximize", storage=storage)
    for value in (0.3, float("inf"), 0.9, 0.1, 0.5, 0.7):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value,
                                     params={"lr": min(value, 1)},
                                     distributions={"lr": FloatDistribution(0, 1)}))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.INTERRUPTED: True}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.SURPLUS: True}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Attr.FAIL_REASON: "disk"}))
    study.enqueue_trial({})
    whole = trials_table(study)  # every trial read whole
    expected = (f"{whole.head(4).to_string(index=False, na_rep='')}\n... the best 4 of 9 trials"
                " (6 complete, 1 interrupted, 1 fail, 1 waiting); --top 0 shows all, --csv or"
                " --json every row")  # fmt: skip
    study._storage.get_all_trials = None  # not called again

    def cells(text: str) -> list[list[str]]:  # column widths follow the rows shown
        return [line.split() for line in text.splitlines()]

    assert cells(status_text(study, "text", top=4)) == cells(expected)
    assert [row[0] for row in cells(expected)[1:5]] == ["1", "2", "5", "4"]
    everything = whole.to_string(index=False, na_rep="")
    assert cells(status_text(study, "text", top=20)) == cells(everything)


def test_the_table_has_the_columns_of_optunas_trials_dataframe(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "seconds"])
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 2.0], params={"x": 1},
                                 distributions={"x": IntDistribution(0, 3)},
                                 user_attrs={"worker": "w0"}, system_attrs={"s": [1]}))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "disk"}))
    study.enqueue_trial({"x": 2})
    ours = trials_frame(study, study.trials)
    optunas = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params",
                                            "user_attrs", "system_attrs"))  # fmt: skip
    assert sorted(ours.columns) == sorted(optunas.columns)
    pd.testing.assert_frame_equal(ours[optunas.columns], optunas, check_dtype=False)
