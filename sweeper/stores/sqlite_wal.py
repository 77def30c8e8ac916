"""The embedded SQLite stores (Optuna's and MLflow's) in write-ahead-log mode.

In SQLite's default mode each commit syncs a rollback journal and the database to disk (about
0.8 ms here, and a trial makes dozens), and a writer blocks every reader. With a write-ahead log
and `synchronous=NORMAL` a commit appends to the log without a sync and readers go on: a killed
worker or launcher still loses no committed write; only a power cut or an OS crash may undo the
last ones, and the file stays whole. The log needs a local file system (not NFS), which SQLite
needs for its locks anyway; a sweep across machines uses PostgreSQL.

Importing this module sets both on every SQLite connection SQLAlchemy opens in the process:
MLflow creates its engine itself, so a listener on one engine would not reach it."""

from __future__ import annotations

import atexit
import contextlib
import sqlite3
import weakref
from typing import Any

import sqlalchemy

_engines: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _write_ahead_log(connection: Any, _record: Any) -> None:
    if not isinstance(connection, sqlite3.Connection):
        return
    cursor = connection.cursor()
    try:
        # Persistent in the file: the first connection converts it, later ones find it so. A file
        # another process holds in the middle of a write keeps its mode until the next connection.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
    except sqlite3.OperationalError:
        pass
    finally:
        cursor.close()


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "engine_connect")
def _remember(connection: sqlalchemy.Connection) -> None:
    if connection.dialect.name == "sqlite":
        _engines.add(connection.engine)


@atexit.register
def close_all() -> None:
    """Close every SQLite connection of the process and put each file back in SQLite's default
    mode where no other process has it open: the last close folds the log into the file, and a
    finished sweep's folder holds one plain file a store, which opens on a read-only disk too
    (a file in WAL mode cannot: its readers write the `-shm` index). The next process to open
    it turns the log on again."""
    for engine in list(_engines):
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError, sqlite3.Error):
            engine.dispose()
        database = engine.url.database
        if not database or database == ":memory:":
            continue
        with (
            contextlib.suppress(sqlite3.Error),  # busy: another process has it open
            contextlib.closing(sqlite3.connect(database, timeout=0)) as connection,
        ):
            connection.execute("PRAGMA journal_mode=DELETE")
