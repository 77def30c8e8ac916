from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART, REPO, sweeper_here

from sweeper.errors import SweeperError
from sweeper.spec.objectives import behind_the_median
from sweeper.spec.stopping import StopRule
from sweeper.spec.study import Study, load_study
from sweeper.stores.paths import SweepPaths

GOOD_SPACE = (
    'def space(trial):\n    return {"model": "cnn2", "lr": trial.suggest_float("lr", 1e-3, 1e-1)}\n'
)
HEADER = "from sweeper.study import Study\n"


@pytest.mark.parametrize("name", ["quickstart", "vgg", "resnet", "lenet", "mlp", "cnn", "pareto"])
def test_shipped_studies_load(name: str) -> None:
    study = load_study(REPO / "studies" / f"{name}.py")
    assert study.name == name and len(study.file_hash) == 12


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("study = Study(name='x', space=space\n", ":8: syntax error"),
        ("x = 1\n", "defines no `study = Study("),
        ("study = Study(name='x', space=space, sampler='tpee')", "sampler='tpee' is invalid"),
        ("study = Study(name='x', space=space, pruner='mean')", "pruner='mean' is invalid"),
        ("study = Study(name='x', space=space, trails=3)", ":8: TypeError"),
        ("study = Study(name='x', space=space, trials=0)", "trials=0 is invalid"),
        ("study = Study(name='x', space=bad)", "unknown model 'vgg15'"),
        ("study = Study(name='x', space=bad_opt)", "optimizer='adamm' is invalid"),
        ("study = Study(name='x', space=space, fixed={'lrr': 1})", "unknown key 'lrr'"),
        ("study = Study(name='x', space=space, sampler='grid')", "needs sampler_options"),
        (
            "study = Study(name='x', space=space, sampler_options={'history': 5})",
            "history=5: give a whole number of trials, 10 or more (None: every trial)",
        ),
        (
            "study = Study(name='x', space=space, sampler='random',"
            " sampler_options={'history': 100})",
            "unexpected keyword argument 'history'",
        ),
        ("study = Study(name='x', space=space, stop_after=0)", "stop_after=0 is invalid"),
        ("study = Study(name='x', space=space, objectives=['params'])", "objectives=['params']"),
        ("study = Study(name='x', space=space, objectives=['val_acc', 'flops'])", "then costs"),
        (
            "study = Study(name='x', space=space, objectives=['val_acc', 'params'],"
            " pruner='hyperband')",
            "with several objectives: 'median' (on the first objective) or 'none'",
        ),
        ("study = Study(name='x', space=space, min_delta=-1)", "min_delta=-1 is invalid"),
    ],
)
def test_broken_study_files_fail_with_one_line(tmp_path: Path, body: str, expected: str) -> None:
    extra = (
        "def bad(trial):\n    return {'model': trial.suggest_categorical('m', ['cnn2', 'vgg15'])}\n"
        "def bad_opt(trial):\n    return {'optimizer': 'adamm'}\n"
    )
    path = tmp_path / "broken.py"
    path.write_text(HEADER + GOOD_SPACE + extra + body + "\n")  # the body is line 8
    with pytest.raises(SweeperError) as error:
        load_study(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_launch_of_a_broken_study_exits_2_before_any_worker(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text(HEADER + "def space(trial):\n    return {'model': 'resnet7'}\n"
                    "study = Study(name='x', space=space)\n")  # fmt: skip
    done = sweeper_here("launch", str(path), "--dir", str(tmp_path / "sweep"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "resnet7" in done.stderr
    assert not (tmp_path / "sweep" / "optuna.db").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--val-size", "2.5"], "--val-size: val_size=2.5 is invalid; give a fraction below 1"),
        (["--val-size", "-1"], "--val-size: val_size=-1.0 is invalid; it must be 0 or more"),
        (["--epochs", "0"], "--epochs=0 is invalid; it must be 1 or more"),
        # sizes the dataset (CIFAR-10: 50,000 training images) cannot hold
        (["--train-size", "60000"],
         "train_size=60000 is larger than the 50000 training images; lower it"),
        (["--val-size", "60000"], "val_size=60000 must be smaller than the 50000 training images"),
        (["--val-size", "500", "--train-size", "49600"],
         "train_size=49600 is larger than the 49500 training images left after val_size=500"),
    ],
)  # fmt: skip
def test_a_bad_scale_down_flag_is_one_line_before_any_worker(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    """Not a failed trial per worker until every worker gives up: one line, nothing made."""
    done = sweeper_here("launch", QUICKSTART, "--dir", str(tmp_path / "sweep"), *flags)
    assert done.returncode == 2
    assert done.stderr == f"sweeper: error: {expected}" + done.stderr.split(expected, 1)[1]
    assert done.stderr.count("\n") == 1
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no store, no sweep file


def test_an_ensemble_with_a_size_the_data_cannot_hold_is_one_line_before_any_worker(
    tmp_path: Path,
) -> None:
    done = sweeper_here("ensemble", QUICKSTART, "--dir", str(tmp_path / "sweep"),
                        "--val-size", "50000")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "sweeper: error: val_size=50000 must be smaller than the 50000 training images\n"
    )
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_worker_started_by_hand_with_a_size_the_data_cannot_hold_is_one_line(
    tmp_path: Path,
) -> None:
    """As a launch's: one line before any trial, not a failed trial after trial."""
    paths = SweepPaths.resolve(tmp_path)
    optuna.create_study(study_name="quickstart", storage=paths.storage_url, direction="maximize")
    done = sweeper_here("worker", QUICKSTART, "--dir", str(tmp_path), "--train-size", "60000")
    assert done.returncode == 2
    assert done.stderr == (
        "sweeper: error: train_size=60000 is larger than the 50000 training images; lower it\n"
    )
    assert optuna.load_study(study_name="quickstart", storage=paths.storage_url).trials == []


def test_bad_storage_url_is_one_line(tmp_path: Path) -> None:
    done = sweeper_here("launch", QUICKSTART, "--storage",
                   "postgresql://postgres:secret@127.0.0.1:1/none")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--storage: cannot open" in done.stderr and "secret" not in done.stderr


def test_a_study_stops_after_finished_trials_that_do_not_raise_its_best() -> None:
    study = optuna.create_study(direction="maximize")
    rule = StopRule(after=2, min_delta=0.01)

    def finish(value: float | None) -> str | None:
        state = optuna.trial.TrialState.COMPLETE if value else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(state=state, value=value))
        return rule.reason(study, study.get_trials())

    assert finish(0.50) is None
    assert finish(0.505) is None  # raised, but by no more than min_delta: 1 in a row
    assert finish(0.52) is None  # raised by 0.02: the count starts again
    assert finish(None) is None  # a pruned trial raises nothing: 1
    assert finish(0.40) == (
        "stop_after: 2 finished trials in a row did not raise the best value (0.5200, trial 2)"
        " by more than 0.01"
    )
    lower = optuna.create_study(direction="minimize")  # val_loss: lower is better
    for value in (1.0, 0.9, 0.8):
        lower.add_trial(optuna.trial.create_trial(value=value))
    assert StopRule(after=1).reason(lower, lower.get_trials()) is None


def test_any_optuna_sampler_or_pruner_and_the_common_ones_by_name() -> None:
    space = lambda trial: {"model": "cnn2", "lr": trial.suggest_float("lr", 1e-3, 1e-1)}  # noqa: E731
    given = optuna.samplers.RandomSampler(seed=3)
    study = Study(name="x", space=space, sampler=given, pruner=optuna.pruners.NopPruner())

    def draws(sampler: optuna.samplers.BaseSampler) -> list[float]:
        probe = optuna.create_study(sampler=sampler)
        probe.optimize(lambda trial: trial.suggest_float("lr", 0, 1), n_trials=3)
        return [trial.params["lr"] for trial in probe.trials]

    launcher, worker = study.make_sampler(), study.make_sampler(worker=1234)
    assert launcher is not given and draws(launcher) == draws(optuna.samplers.RandomSampler(3))
    assert draws(worker) != draws(optuna.samplers.RandomSampler(3))  # workers draw apart
    assert study.make_pruner() is study.pruner
    for name, cls in (("gp", optuna.samplers.GPSampler), ("nsga2", optuna.samplers.NSGAIISampler)):
        assert type(Study(name="x", space=space, sampler=name).make_sampler()) is cls


def test_several_objectives_prune_by_the_median_of_the_first() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for value in (0.5, 0.6, 0.7):
        study.add_trial(optuna.trial.create_trial(values=[value, 1.0],
                                                  user_attrs={"curve": {"2": value}}))  # fmt: skip
    assert behind_the_median(study, 9, epoch=2, value=0.55)  # below 0.6
    assert not behind_the_median(study, 9, epoch=2, value=0.65)
    assert not behind_the_median(study, 9, epoch=1, value=0.0)  # the first epoch: warm-up
    assert not behind_the_median(study, 9, epoch=3, value=0.0)  # no trial reached epoch 3
    study.add_trial(optuna.trial.create_trial(values=[0.2, 1.0]))  # no curve: not counted
    assert not behind_the_median(study, 0, epoch=2, value=0.55)  # trial 0's own value left out
