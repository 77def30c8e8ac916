"""The Optuna storage that sweeper's workers share."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweeper.stores import sqlite_wal, trial_rows
from sweeper.stores.storage import make_storage

# Each process asks for queued trials until the queue is empty, as ensemble workers do.
ASK_ALL = """
import json, sys, time
import optuna
from sweeper.stores import sqlite_wal
from sweeper.stores.storage import make_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="queue", storage=make_storage(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)  # both processes start asking at the same moment
popped = []
while True:
    trial = study.ask()
    if "member" not in trial.user_attrs:
        break
    popped.append(trial.number)
print(json.dumps(popped))
"""


@pytest.mark.e2e
def test_two_workers_never_pop_the_same_queued_trial_from_sqlite(tmp_path: Path) -> None:
    """SQLite has no row locks: Optuna's "WAITING -> RUNNING unless another got it first" must
    run in a write transaction, or two workers both train (and both tell) one ensemble member."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="queue", storage=make_storage(url))
    for member in range(60):
        study.enqueue_trial({"member": member}, user_attrs={"member": member})
    start = str(time.time() + 6)
    workers = [
        subprocess.Popen([sys.executable, "-c", ASK_ALL, url, start], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    popped = [json.loads(worker.communicate(timeout=120)[0]) for worker in workers]
    assert sorted(popped[0] + popped[1]) == list(range(60))  # each member once, none twice


def test_sqlite_stores_keep_a_write_ahead_log_and_fold_it_in_at_the_end(tmp_path: Path) -> None:
    """Commits append to a log without a sync to disk (sweeper/stores/sqlite_wal.py); another
    process reads every committed trial meanwhile, and closing leaves the one file."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = make_storage(url)
    study = optuna.create_study(study_name="wal", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert (tmp_path / "optuna.db-wal").exists()
    count = "import optuna, sys; print(len(optuna.load_study(study_name='wal', storage=sys.argv[1])"
    count += ".trials))"
    read = subprocess.run([sys.executable, "-c", count, url], capture_output=True, text=True)
    assert read.stdout.strip() == "3"
    first = study.trials[0]
    assert storage.trial_state(first._trial_id) == optuna.trial.TrialState.COMPLETE
    with pytest.raises(KeyError):
        storage.trial_state(10_000)
    held = make_storage(url)  # a second engine on the file: both close, then the file turns back
    held.get_all_studies()
    sqlite_wal.close_all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]
    # back in SQLite's default mode: a finished sweep's folder opens on a read-only disk
    assert sqlite3.connect(tmp_path / "optuna.db").execute("PRAGMA journal_mode").fetchone() == (
        "delete",
    )
    assert len(optuna.load_study(study_name="wal", storage=url).trials) == 3


def _open(url: str) -> str:
    try:
        make_storage(url)
    except Exception as exc:  # noqa: BLE001 - the message is the result
        return str(exc)
    return "opened"


def test_processes_opening_one_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """A launch creating its tables while `sweeper status` (or a second launch) opens the file
    met "table studies already exists": the loser of the race tries again."""
    urls = [f"sqlite:///{tmp_path / f'optuna{round}.db'}" for round in range(3)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        for url in urls:
            assert pool.map(_open, [url] * 4) == ["opened"] * 4


def test_sqlite_reads_neither_wait_for_a_writer_nor_hold_one_up(tmp_path: Path) -> None:
    """Only a storage method that may write takes SQLite's one write lock (_begin):
    sixteen workers' and the launcher's reads go on while another process writes."""
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="locks", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    trial_id = study.trials[0]._trial_id
    other = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker, mid-write

    def reads() -> None:
        assert len(storage.get_all_trials(study._study_id)) == 2
        assert storage.trial_state(trial_id) == optuna.trial.TrialState.COMPLETE
        assert storage.get_trial(trial_id).params == study.trials[0].params

    reader = threading.Thread(target=reads)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive()
    writer = threading.Thread(target=storage.set_study_user_attr, args=(study._study_id, "k", 1))
    writer.start()
    writer.join(timeout=1)
    assert writer.is_alive()  # a write waits for the lock
    other.execute("COMMIT")
    writer.join(timeout=60)
    assert storage.get_study_user_attrs(study._study_id) == {"k": 1}


def _rich_study(storage: optuna.storages.BaseStorage, name: str, directions: list[str]) -> None:
    """Trials in every state, with every kind of param, value and attribute Optuna stores."""
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.enqueue_trial({"x": 0.5, "kind": "b"}, user_attrs={"queued": True})

    def objective(trial: optuna.Trial) -> Any:
        x = trial.suggest_float("x", 1e-3, 1.0, log=True)
        trial.suggest_categorical("kind", ["a", "b", None])
        trial.suggest_int("n", 1, 9, step=2)
        trial.set_user_attr("nested", {"list": [1, 2.5, "s"], "flag": False})
        trial.storage.set_trial_system_attr(trial._trial_id, "mark", [trial.number])
        if len(directions) == 1:
            trial.report(float("inf") if trial.number == 2 else x, 0)
            trial.report(float("nan"), 1)
        if trial.number == 3:
            raise optuna.TrialPruned()
        if trial.number == 4:
            raise ValueError("failed")
        value = float("-inf") if trial.number == 5 else x
        return value if len(directions) == 1 else (value, -x)

    study.optimize(objective, n_trials=7, catch=(ValueError,))
    study.ask()  # running
    study.enqueue_trial({"x": 0.1})  # waiting


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_trials_read_from_rows_are_optunas_own(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RetryingStorage._get_trials builds the trials from plain rows (stores/trial_rows.py):
    every filter Optuna's cache asks for gives what Optuna's own ORM read gives."""
    url = (f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite"
           else request.getfixturevalue("new_database")())  # fmt: skip
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # times are stored in UTC and read in local time
    time.tzset()
    try:
        _compare_reads(url, monkeypatch)
    finally:
        os.environ.pop("TZ") if zone is None else os.environ.update(TZ=zone)
        time.tzset()


def _compare_reads(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = make_storage(url)
    for name, directions in (("one", ["maximize"]), ("two", ["maximize", "minimize"])):
        _rich_study(storage, name, directions)
        study_id = storage.get_study_id_from_name(name)
        ids = [t._trial_id for t in storage.get_all_trials(study_id)]
        for states, included, above in (
            (None, set(), -1),
            ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
            ((TrialState.WAITING,), set(), -1),
            (None, {ids[1], ids[4]}, ids[6]),
            (None, set(), ids[5]),
            (None, set(ids[:6]), ids[6]),
        ):
            for limit in (trial_rows.INCLUDED_IN_QUERY, 2):  # 2: the ids are picked out here
                monkeypatch.setattr(trial_rows, "INCLUDED_IN_QUERY", limit)
                ours = storage._get_trials(study_id, states, included, above)
                theirs = RDBStorage._get_trials(storage, study_id, states, included, above)
                assert [_fields(t) for t in ours] == [_fields(t) for t in theirs]
                assert ours, (states, included, above)
    with pytest.raises(KeyError):
        storage._get_trials(10_000, None, set(), -1)


def _fields(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's fields, its dicts in key order (a database returns rows in any order), nan too."""
    return repr({key: sorted(value.items(), key=str) if isinstance(value, dict) else value
                 for key, value in vars(trial).items()})  # fmt: skip
