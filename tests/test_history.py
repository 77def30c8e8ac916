"""The bounded history of sweeper's TPE (spec/history.py): unchanged up to its limit, a window
that keeps the best and an even spread past it."""

import optuna
import pytest

from sweeper.spec.history import FINISHED, BoundedHistory, Window, sampler_name, window
from sweeper.spec.study import Study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    return (x - 1) ** 2 + (kind == "b")


def filled(n: int, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """A study of n finished random trials (values 0..n-1 scrambled), sampled by `sampler`."""
    study = optuna.create_study(sampler=sampler)
    for i in range(n):
        params = {"x": (i * 7919 % 1000) / 100 - 5, "kind": "ab"[i % 2]}
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=n)
    return study


def test_up_to_its_limit_it_suggests_what_tpe_suggests() -> None:
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    bounded = optuna.create_study(
        sampler=BoundedHistory(optuna.samplers.TPESampler(seed=3), limit=100)
    )
    plain.optimize(objective, n_trials=40)
    bounded.optimize(objective, n_trials=40)
    assert [t.params for t in bounded.trials] == [t.params for t in plain.trials]


def test_past_its_limit_the_window_keeps_the_best_and_a_spread() -> None:
    study = filled(600, optuna.samplers.RandomSampler(seed=0))
    trials = study.get_trials(deepcopy=False)
    kept = window(trials, 100, optuna.study.StudyDirection.MINIMIZE)
    assert kept is not None and 95 <= len(kept) <= 105
    best = sorted(trials, key=lambda t: t.value)[:10]
    assert {t.number for t in best} <= kept
    numbers = sorted(kept - {t.number for t in best})
    assert numbers[0] < 20 and numbers[-1] > 580  # from the whole study, not its end
    assert window(trials[:100], 100, optuna.study.StudyDirection.MINIMIZE) is None


def test_past_its_limit_tpe_sees_the_window_and_the_new_trials() -> None:
    seen: list[int] = []

    class Counting(optuna.samplers.TPESampler):
        def sample_relative(self, study, trial, search_space):
            seen.append(len(study._get_trials(deepcopy=False)))
            return super().sample_relative(study, trial, search_space)

    study = filled(600, optuna.samplers.RandomSampler(seed=0))
    study.sampler = BoundedHistory(Counting(seed=0, multivariate=True), limit=100)
    study.optimize(objective, n_trials=8)
    # the window of about 100, the trials since it was chosen, the one being sampled
    assert seen and all(90 <= count <= 100 + 5 + 8 for count in seen)
    assert all(-5 <= t.params["x"] <= 5 for t in study.trials[-8:])
    assert study.best_value < 0.1


def test_sweeper_tpe_is_bounded_unless_told_otherwise() -> None:
    def make(**options):
        return Study(name="x", space=lambda t: {}, sampler_options=options).make_sampler()

    sampler = make()
    assert isinstance(sampler, BoundedHistory) and sampler.limit == 1000
    assert sampler_name(sampler) == "TPESampler"
    assert make(history=5000).limit == 5000
    assert isinstance(make(history=None), optuna.samplers.TPESampler)
    assert isinstance(make(history=50, multivariate=True).sampler._multivariate, bool)
    with pytest.raises(ValueError, match="history=True"):
        make(history=True)


def test_the_window_shows_what_the_whole_read_would() -> None:
    """Window.shown finds the trials by index; a read with a gap in its numbers (as a study's
    could be mid-write) is filtered one by one: both show the same."""
    study = filled(300, optuna.samplers.RandomSampler(seed=0))
    running = [study.ask() for _ in range(3)]  # 300, 301, 302
    trials = study.get_trials(deepcopy=False)
    numbers = window(trials, 100, optuna.study.StudyDirection.MINIMIZE)
    chosen = Window.over(trials, numbers)
    assert chosen.horizon == 302 and chosen.pending == [300, 301, 302]
    study.tell(running[1], 0.5)  # finished since, not kept: no longer shown
    later = [study.ask() for _ in range(2)]  # past the horizon: shown
    now = study.get_trials(deepcopy=False)
    expected = [t.number for t in now if t.number in numbers or t.number > chosen.horizon
                or t.state not in FINISHED]  # fmt: skip
    assert [t.number for t in chosen.shown(now)] == expected
    assert {300, 302, *(t.number for t in later)} <= set(expected) and 301 not in expected
    gap = [t for t in now if t.number != 150]
    assert [t.number for t in chosen.shown(gap)] == [n for n in expected if n != 150]
