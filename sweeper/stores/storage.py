"""Optuna's storage as sweeper's workers use it: heartbeats, retried dead workers' trials,
waiting out a locked SQLite file or a restarting database server."""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Callable, Container
from typing import Any, NamedTuple

import optuna
import sqlalchemy
from optuna.storages import (
    BaseStorage,
    GrpcStorageProxy,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._rdb import models  # Optuna's own tables (tests/test_optuna_names.py)
from optuna.storages._rdb.storage import _create_scoped_session

from sweeper.errors import SweeperError, first_line
from sweeper.stores import sqlite_wal  # noqa: F401  (every SQLite connection in WAL mode)
from sweeper.stores.retry import retried
from sweeper.stores.trial_rows import read_trials

# Heartbeats and retries are marked experimental in Optuna, yet they are its supported way.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# A live worker refreshes its trial's heartbeat this often (seconds); a trial unrefreshed for
# the grace period belongs to a dead worker: it is failed, then retried from its checkpoint.
HEARTBEAT_S = int(os.environ.get("SWEEPER_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("SWEEPER_GRACE_S", "30"))
MAX_RETRY = 3
# How long a storage connection waits for a database that is down or restarting (seconds);
# SWEEPER_STORAGE_PATIENCE_S is its name before sweeper 0.2.
STORAGE_WAIT_S = float(
    os.environ.get("SWEEPER_STORAGE_WAIT_S") or os.environ.get("SWEEPER_STORAGE_PATIENCE_S", "600")
)
PROXY_WAIT_S = 10.0  # how long a client waits for a `sweeper storage-proxy` to answer (seconds)


def make_storage(url: str) -> BaseStorage:
    """Optuna's RDB storage with heartbeats, retries of dead workers' trials, and patient SQLite;
    or, for grpc://HOST:PORT, the client of a `sweeper storage-proxy` (which has none of these
    itself: the proxy's own storage waits out database restarts)."""
    if url.startswith("grpc://"):
        return proxy_client(url)
    if url.startswith("sqlite"):
        # Optuna's heartbeat thread dies silently on "database is locked": wait instead.
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}

    def open_storage() -> RetryingStorage:
        storage = RetryingStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
        if url.startswith("sqlite"):
            sqlalchemy.event.listen(storage.engine, "begin", _begin)
        else:  # opened once: from now on, wait out restarts
            sqlalchemy.event.listen(storage.engine, "do_connect", _waiting_connect)
            sqlalchemy.event.listen(storage.engine, "invalidate", storage.note_lost)
        return storage

    try:  # two first opens of one database create its tables at once: the loser tries again
        return retried(open_storage, retry=_lost_table_race, wait_s=10, max_pause=1)
    except Exception as exc:  # a typo'd URL, a wrong password, an unreachable host
        raise SweeperError(f"--storage: cannot open {redact(url)}: {first_line(exc)}") from None


_reading = threading.local()  # set while this thread runs a storage method that only reads


def _begin(connection: sqlalchemy.Connection) -> None:
    """A SQLite transaction that may write takes the write lock when it begins. SQLite has no row
    locks, so Optuna's "WAITING -> RUNNING unless another worker got it first" (its SELECT ...
    FOR UPDATE) would otherwise let two workers take one queued trial, as ensemble members are.
    A method that only reads begins a plain transaction: in the write-ahead log it reads a
    snapshot and neither waits for the writer nor makes the writer wait (SQLite's wait for a
    lock is a sleep of 1 to 100 ms, so sixteen workers' reads queued behind each other's)."""
    connection.exec_driver_sql("BEGIN" if getattr(_reading, "now", False) else "BEGIN IMMEDIATE")


def proxy_client(url: str) -> GrpcStorageProxy:
    """The client of the `sweeper storage-proxy` at grpc://HOST:PORT, once it answers."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path.strip("/") or parts.query:
        raise SweeperError(f"--storage {redact(url)}: a storage proxy's URL is grpc://HOST:PORT")
    client = GrpcStorageProxy(host=parts.hostname, port=port)
    try:
        client.wait_server_ready(timeout=PROXY_WAIT_S)
    except ConnectionError:
        raise SweeperError(
            f"--storage: no storage proxy answers at {parts.hostname}:{port} after"
            f" {PROXY_WAIT_S:.0f} s; start one with `sweeper storage-proxy --storage URL --port"
            f" {port}`"
        ) from None
    return client


def note_limits(url: str) -> None:
    """One stderr line on what sweeper cannot do with this storage (Optuna's gRPC proxy client is
    no BaseHeartbeat: its trials send no heartbeats, so none is ever found stale)."""
    if url.startswith("grpc://"):
        print(f"sweeper: note: through the storage proxy at {redact(url)} trials send no "
              "heartbeats: a trial whose worker is killed stays RUNNING for good, is not retried "
              "from its checkpoint, and a trial budget waits on it until --timeout",
              file=sys.stderr, flush=True)  # fmt: skip


def _lost_table_race(error: Exception) -> bool:
    if isinstance(error, sqlalchemy.exc.OperationalError):  # SQLite: "table studies already exists"
        return "already exists" in str(error)
    return isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError)


def backend_of(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's cache (its `_CachedStorage`): sweeper's RetryingStorage, or
    a proxy's client; a storage not under the cache is its own."""
    return getattr(storage, "_backend", storage)


class IndexedTrial(NamedTuple):
    """A trial as RetryingStorage.trial_index reads it."""

    trial_id: int
    number: int
    state: optuna.trial.TrialState
    value: float | None  # the first objective's
    flags: frozenset[str]  # the boolean user attributes asked for that it holds true


class RetryingStorage(RDBStorage):
    """RDBStorage that waits out a database restart instead of failing the trial in progress.

    A query whose connection was cut (the server restarted or dropped it) is asked again on a
    new connection, which waits for the server (`_waiting_connect`). Only idempotent methods are
    repeated: a repeated `create_new_trial` could add a second trial that no worker owns, so a
    cut there ends the worker and the launcher starts another. Optuna's heartbeat thread ends at
    its first exception, silently, and the trial would then look dead to the other workers while
    it trains on: a missed beat is reported and made up at the next one.

    After this process lost a connection, the other workers' heartbeats may be as old as the
    outage while their trials train on: no trial is called dead (and retried) until they have
    had the grace period to beat again.
    """

    lost_at = -math.inf  # when this process last lost a database connection (monotonic)

    def note_lost(self, *_: Any) -> None:
        self.lost_at = time.monotonic()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None and self.grace_period is not None
        stale = super()._get_stale_trial_ids(study_id)  # may be what finds the connection lost
        if time.monotonic() - self.lost_at < self.grace_period + self.heartbeat_interval:
            return []
        return stale

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes of a running trial in one transaction: one commit, where
        set_trial_user_attr makes one each."""
        with _create_scoped_session(self.scoped_session, True) as session:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )

    def _get_trials(
        self,
        study_id: int,
        states: Container[optuna.trial.TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[optuna.trial.FrozenTrial]:
        """Optuna's, from plain rows: a fraction of its CPU and memory (stores/trial_rows.py)."""
        with _create_scoped_session(self.scoped_session) as session:
            return read_trials(session, study_id, states, included_trial_ids, trial_id_greater_than)

    def trial_state(self, trial_id: int) -> optuna.trial.TrialState:
        """One trial's state, one column read: get_trial reads the whole trial in six queries,
        and a worker asks every epoch whether its trial still runs."""
        with _create_scoped_session(self.scoped_session) as session:
            state = session.query(models.TrialModel.state).filter_by(trial_id=trial_id).scalar()
        if state is None:
            raise KeyError(f"no trial with id {trial_id}")
        return state

    def trial_index(self, study_id: int, flags: tuple[str, ...]) -> list[IndexedTrial]:
        """Every trial of a study as three columns, its first value, and which of the boolean
        user attributes `flags` it holds true: two queries, where get_all_trials builds 10,000
        whole trials from over 100,000 rows (a status of the best 20 needs only this)."""
        values = models.TrialValueModel
        with _create_scoped_session(self.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id, models.TrialModel.number,
                              models.TrialModel.state, values.value, values.value_type)
                .outerjoin(values, (values.trial_id == models.TrialModel.trial_id)
                           & (values.objective == 0))
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )  # fmt: skip
            attrs = models.TrialUserAttributeModel
            flagged = (
                session.query(attrs.trial_id, attrs.key)
                .join(models.TrialModel, models.TrialModel.trial_id == attrs.trial_id)
                .filter(models.TrialModel.study_id == study_id, attrs.key.in_(flags),
                        attrs.value_json == "true")
                .all()
            )  # fmt: skip
        held: dict[int, set[str]] = {}
        for trial_id, key in flagged:
            held.setdefault(trial_id, set()).add(key)
        return [
            IndexedTrial(trial_id, number, state,
                         None if kind is None else values.stored_repr_to_value(value, kind),
                         frozenset(held.get(trial_id, ())))
            for trial_id, number, state, value, kind in rows
        ]  # fmt: skip

    def trial_counts(self, study_id: int, but: str) -> Counter[optuna.trial.TrialState]:
        """How many trials of the study are in each state, but those whose boolean user
        attribute `but` is true: one query, where a worker's check of the budget before each
        trial read the running trials whole and went through 10,000 cached ones."""
        trials, attrs = models.TrialModel, models.TrialUserAttributeModel
        flagged = (attrs.trial_id == trials.trial_id) & (attrs.key == but)
        with _create_scoped_session(self.scoped_session) as session:
            rows = (  # a look-up of (trial_id, key) in its index a trial, not a scan of them all
                session.query(trials.state,
                              sqlalchemy.func.count(trials.trial_id)
                              - sqlalchemy.func.count(attrs.trial_id))
                .outerjoin(attrs, flagged & (attrs.value_json == "true"))
                .filter(trials.study_id == study_id)
                .group_by(trials.state)
                .all()
            )  # fmt: skip
        return Counter({state: n for state, n in rows if n})

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
            print(f"sweeper: heartbeat of trial id {trial_id} missed ({first_line(error)})",
                  file=sys.stderr)  # fmt: skip


def _repeated_when_cut_off(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def repeated(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retried(lambda: method(self, *args, **kwargs), retry=_cut_off,
                         wait_s=STORAGE_WAIT_S, max_pause=0.5)  # fmt: skip

    return repeated


def _cut_off(error: Exception) -> bool:
    """Did the query fail because its connection was lost, rather than because of what it asked?"""
    if not isinstance(error, sqlalchemy.exc.DBAPIError | optuna.exceptions.StorageInternalError):
        return False
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    # Optuna's _get_trials answers an OperationalError (the cut) with a second query on the same
    # session, which then fails as PendingRollbackError: a cut as well.
    return isinstance(cause, sqlalchemy.exc.PendingRollbackError) or (
        isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated
    )


# What Optuna's cached storage and a worker call while a trial runs, create_new_trial excepted.
# Private names among them are Optuna's internals: tests/test_optuna_names.py checks they exist.
REPEATED_METHODS = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "set_study_user_attr",
    "set_study_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs", "_get_trials",
    "_get_best_trial_id", "_get_stale_trial_ids", "_set_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "set_trial_user_attrs", "trial_state", "trial_index", "trial_counts",
)  # fmt: skip
# The methods among them that only read: on SQLite they take no write lock (_begin).
READ_METHODS = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_trial_param",
    "get_trial_user_attrs", "get_trial_system_attrs", "_get_trials", "_get_best_trial_id",
    "_get_stale_trial_ids", "trial_state", "trial_index", "trial_counts",
)  # fmt: skip


def _only_reading(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def reading(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        before, _reading.now = getattr(_reading, "now", False), True
        try:
            return method(self, *args, **kwargs)
        finally:
            _reading.now = before

    return reading


for _name in REPEATED_METHODS:
    setattr(RetryingStorage, _name, _repeated_when_cut_off(getattr(RetryingStorage, _name)))
for _name in READ_METHODS:
    setattr(RetryingStorage, _name, _only_reading(getattr(RetryingStorage, _name)))


def _waiting_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """A new database connection; while the server is down or restarting, wait for it."""
    return retried(
        lambda: dialect.connect(*cargs, **cparams),
        retry=lambda error: isinstance(error, dialect.loaded_dbapi.OperationalError),
        wait_s=STORAGE_WAIT_S,
        max_pause=5.0,
    )


def load_stored_study(name: str, storage: BaseStorage, url: str, **kwargs: Any) -> optuna.Study:
    """An existing study, or one line that names the studies the storage does hold."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        held = ", ".join(names) if names else "none"
        raise SweeperError(
            f"no study '{name}' in {redact(url)} (it holds: {held}); launch it first with "
            "`sweeper launch STUDY_FILE`, or check --dir/--storage and the file's `name`"
        ) from None


def redact(url: str) -> str:
    """A storage URL without its password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
