"""The private Optuna names sweeper still relies on: these fail loudly when Optuna renames one."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage

from sweeper.stores import storage
from sweeper.worker.objective import TrialDiverged, set_user_attrs, still_running

PRIVATE_METHODS = sorted(
    {n for n in storage.REPEATED_METHODS + storage.READ_METHODS if n.startswith("_")}
)


@pytest.mark.parametrize("name", PRIVATE_METHODS)
def test_the_private_storage_methods_sweeper_repeats_exist(name: str) -> None:
    assert callable(getattr(RDBStorage, name, None)), f"RDBStorage.{name} is gone"
    assert getattr(storage.RetryingStorage, name) is not getattr(RDBStorage, name)


def test_stale_trials_are_found_through_get_stale_trial_ids(tmp_path: Path) -> None:
    """RetryingStorage overrides _get_stale_trial_ids; fail_stale_trials must still call it."""
    calls: list[int] = []

    class Counting(storage.RetryingStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            calls.append(study_id)
            return super()._get_stale_trial_ids(study_id)

    counting = Counting(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=counting)
    optuna.storages.fail_stale_trials(study)
    assert calls, "fail_stale_trials no longer calls _get_stale_trial_ids"


def test_failed_trials_are_logged_on_the_logger_sweeper_filters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sweeper's one-line filter sits on "optuna.study._optimize", the logger that logs a
    failed trial with its traceback; the known causes lose the traceback."""

    def objective(trial: optuna.Trial) -> float:
        raise TrialDiverged("diverged: the loss became NaN or inf in epoch 1")

    study = optuna.create_study()
    with caplog.at_level(logging.WARNING, logger="optuna"):
        study.optimize(objective, n_trials=1, catch=(TrialDiverged,))
    (record,) = [r for r in caplog.records if "following error" in r.getMessage()]
    assert record.name == "optuna.study._optimize"
    assert record.exc_info is None  # the filter took the traceback away


def test_a_trial_reads_its_own_state_through_its_id_and_storage(tmp_path: Path) -> None:
    """still_running reads Trial._trial_id and Trial.storage: a trial another process ended
    (Optuna's heartbeat check, here the study's tell) is seen as no longer RUNNING."""
    study = optuna.create_study(storage=storage.make_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trial = study.ask()
    assert still_running(trial)
    optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'o.db'}").tell(
        trial.number, state=optuna.trial.TrialState.FAIL
    )
    assert not still_running(trial)


def test_several_user_attrs_of_a_trial_go_in_one_transaction(tmp_path: Path) -> None:
    """RetryingStorage.set_trial_user_attrs writes through Optuna's private
    _set_trial_attr_without_commit; what it writes reads back like set_user_attr's."""
    store = storage.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=store)
    trial = study.ask()
    commits: list[int] = []
    sqlalchemy.event.listen(store.engine, "commit", lambda _: commits.append(1))
    store.set_trial_user_attrs(trial._trial_id, {"a": 1, "b": {"c": [2]}, "d": "x"})
    assert len(commits) == 1
    store.set_trial_user_attrs(trial._trial_id, {"a": 2})  # an update, not a second row
    assert study.trials[0].user_attrs == {"a": 2, "b": {"c": [2]}, "d": "x"}
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError):  # a finished trial is not updatable
        store.set_trial_user_attrs(trial._trial_id, {"a": 3})


def test_a_trial_sets_several_attrs_through_the_backend_under_optunas_cache(
    tmp_path: Path,
) -> None:
    """objective.set_user_attrs reaches RetryingStorage under Optuna's _CachedStorage
    (`_backend`) and keeps the trial's own copy (`_cached_frozen_trial`) in step."""
    study = optuna.create_study(storage=storage.make_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trial = study.ask()
    assert isinstance(trial.storage._backend, storage.RetryingStorage)
    set_user_attrs(trial, {"a": 1, "b": [2]})
    assert trial.user_attrs == {"a": 1, "b": [2]} == study.trials[0].user_attrs
    in_memory = optuna.create_study().ask()  # no backend to batch: one call each
    set_user_attrs(in_memory, {"a": 1})
    assert in_memory.user_attrs == {"a": 1}
