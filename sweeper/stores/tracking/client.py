"""sweeper's MLflow client: MLflow's environment defaults, retries while a server is down."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # workers often have no network
# A tracking server that is down is waited for by sweeper itself (RetryingClient, buffered
# epochs), so MLflow's own retries only need to cover a blip, not minutes of backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars on stderr

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from requests.exceptions import RequestException  # noqa: E402

from sweeper.errors import first_line  # noqa: E402
from sweeper.records import Tag  # noqa: E402
from sweeper.stores import sqlite_wal  # noqa: E402  (SQLite stores in WAL mode)
from sweeper.stores.paths import cache_dir  # noqa: E402
from sweeper.stores.retry import retried  # noqa: E402

log = logging.getLogger(__name__)
# A new store's "Creating initial MLflow database tables..." is MLflow's business, not the user's.
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# seconds a call waits for a server that is down (SWEEPER_TRACKING_PATIENCE_S before sweeper 0.2)
WAIT_S = float(
    os.environ.get("SWEEPER_TRACKING_WAIT_S")
    or os.environ.get("SWEEPER_TRACKING_PATIENCE_S", "600")
)
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(error: BaseException) -> bool:
    """An error of an unreachable or overloaded tracking server, worth trying again."""
    overloaded = isinstance(error, MlflowException) and error.error_code in TRANSIENT_CODES
    return overloaded or isinstance(error, RequestException)


def new_sqlite_store(database: Path, artifact_root: str) -> None:
    """Create an embedded MLflow store as a copy of an empty one that this MLflow version migrated
    once (kept in the cache): its ~100 schema migrations would cost every new --dir 1-2 s."""
    template = cache_dir() / "stores" / f"mlflow-{mlflow.__version__}.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        fresh = template.with_name(f"{template.name}.{uuid.uuid4().hex}")
        MlflowClient(f"sqlite:///{fresh}").search_experiments()  # MLflow creates the tables
        sqlite_wal.close_all()  # before the rename: the last close folds the log into the file
        os.replace(fresh, template)
    copy = database.with_name(f"{database.name}.{uuid.uuid4().hex}")
    with (
        contextlib.closing(sqlite3.connect(template)) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
        now = int(time.time() * 1000)  # the Default experiment, as MLflow would have made it here
        target.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ?"
            " WHERE experiment_id = 0", (f"{artifact_root}/0", now, now),
        )  # fmt: skip
        target.commit()
    try:
        os.link(copy, database)  # only if no other process made the store first
    except FileExistsError:
        pass
    finally:
        copy.unlink()


class RetryingClient:
    """An MlflowClient whose calls wait out a tracking server that is down or restarting (over
    http(s) only: a local store's errors are no outage); `raw` is the plain client."""

    def __init__(self, tracking_uri: str) -> None:
        self.raw = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.remote = tracking_uri.startswith(("http://", "https://"))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.raw, name)
        if not self.remote or not callable(method):
            return method
        return functools.partial(self.wait_for, method)

    def wait_for(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """method(*args, **kwargs), tried again with a growing pause for up to WAIT_S."""

        def waiting(error: Exception) -> None:
            log.warning("tracking server %s unreachable (%s); waiting up to %.0f s",
                        self.tracking_uri, first_line(error), WAIT_S)  # fmt: skip

        return retried(
            lambda: method(*args, **kwargs),
            retry=is_transient,
            wait_s=WAIT_S,
            pause=1.0,
            on_wait=waiting,
            on_back=lambda: log.warning("tracking server %s is back", self.tracking_uri),
        )

    def create_run_once(self, experiment_id: str, tags: dict[str, str], run_name: str) -> Run:
        """create_run that a lost reply cannot double. Over HTTP the request is then sent again
        (by MLflow's own retry or by wait_for) and the server makes a second run; the run the
        reply named is kept and its double deleted."""
        if not self.remote:  # a local store has no reply to lose
            return self.create_run(experiment_id, tags=tags, run_name=run_name)
        token = uuid.uuid4().hex
        run = self.create_run(
            experiment_id, tags={**tags, Tag.CREATE_TOKEN: token}, run_name=run_name
        )
        query = f"tags.`{Tag.CREATE_TOKEN}` = '{token}'"
        for double in self.search_runs([experiment_id], filter_string=query):
            if double.info.run_id != run.info.run_id:
                self.delete_run(double.info.run_id)
        return run

    def load_dict(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run, as log_dict wrote it."""
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.download_artifacts(run_id, path, dst_path=tmp)).read_text())
