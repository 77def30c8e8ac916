"""Real PostgreSQL storage: two launches at once, cut connections, one clean line per bad URL.
The launch tests of test_launch.py run over it too.

Each test's database is created fresh on the real server by conftest's `new_database` and
dropped at the end of the module.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from helpers import QUICKSTART, SWEEPER, descendants, sweeper_here

from sweeper.stores import storage as storage_module
from sweeper.stores.storage import make_storage

SMALL = ["--epochs", "1", "--train-size", "500", "--val-size", "500",
         "--no-ensemble", "--no-progress"]  # fmt: skip
FINISHED = ("COMPLETE", "PRUNED")
SECRET = "s3cret-Pw-4711"


def launch_args(storage: str, sweep_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [SWEEPER, "launch", QUICKSTART, "--storage", storage, "--dir", str(sweep_dir),
            "--data-dir", str(data_dir), *SMALL, *extra]  # fmt: skip


def counted(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards the budget: finished ones, not surplus."""
    study = optuna.load_study(study_name="quickstart", storage=make_storage(storage))
    return [
        t
        for t in study.get_trials()
        if t.state.name in FINISHED and not t.user_attrs.get("surplus")
    ]


def test_two_launches_at_once_share_the_budget(
    new_database: Callable[[], str], tmp_path: Path, datasets_dir: Path
) -> None:
    storage = new_database()  # fresh: both launches race to create the tables and the study
    launches = [
        subprocess.Popen(
            launch_args(
                storage, tmp_path / f"host{i}", datasets_dir, "--trials", "4", "--workers", "1"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for launch in launches:
        _, err = launch.communicate(timeout=600)
        assert launch.returncode == 0, err[-3000:]
    trials = counted(storage)
    assert len(trials) == 4
    numbers = [t.number for t in optuna.load_study(
        study_name="quickstart", storage=make_storage(storage)).get_trials()]  # fmt: skip
    assert len(numbers) == len(set(numbers))


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg", "postgresql+psycopg2"])
def test_every_driver_form_of_the_url_opens(new_database: Callable[[], str], driver: str) -> None:
    url = sa.make_url(new_database()).set(drivername=driver).render_as_string(hide_password=False)
    storage = make_storage(url)
    assert storage.get_all_studies() == []
    assert storage.engine.dialect.driver == (driver.partition("+")[2] or "psycopg")
    storage.engine.dispose()


def test_a_plain_postgresql_url_launches_and_its_password_stays_off_command_lines(
    new_database: Callable[[], str], tmp_path: Path, datasets_dir: Path
) -> None:
    """`postgresql://`, as most people type it (SQLAlchemy's default driver, psycopg 3), with a
    password (the local server trusts 127.0.0.1 and takes any): the launcher hands it to its
    workers on stdin, never on their command lines or in their environment, which other users'
    `ps` and /proc show."""
    url = sa.make_url(new_database()).set(drivername="postgresql", password=SECRET)
    storage = url.render_as_string(hide_password=False)
    launcher = subprocess.Popen(
        launch_args(storage, tmp_path, datasets_dir, "--trials", "2", "--workers", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[int, str] = {}  # worker pid -> its command line
    typed = Path(f"/proc/{launcher.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    try:
        while launcher.poll() is None:
            for pid in descendants(launcher.pid):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:  # it ended meanwhile
                    continue
                if cmdline == typed:  # forked, not yet exec'd: still the launcher's own memory
                    continue
                assert SECRET.encode() not in cmdline + environ, cmdline
                seen[pid] = cmdline.decode()
            time.sleep(0.1)
    finally:
        launcher.terminate()  # a no-op once it ended; else it stops its workers
    _, err = launcher.communicate()
    assert launcher.returncode == 0, err[-3000:]
    assert len([c for c in seen.values() if " worker " in c]) >= 2, seen
    assert len(counted(storage)) == 2
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):  # stores, logs, checkpoints
        assert SECRET.encode() not in path.read_bytes(), path
    # By hand, a worker and `sweeper status` take the URL from $SWEEPER_STORAGE instead of a flag.
    env = {"SWEEPER_STORAGE": storage}
    worker = sweeper_here("worker", QUICKSTART, "--dir", str(tmp_path), "--data-dir",
                          str(datasets_dir), "--trials", "3", "--epochs", "1", "--train-size",
                          "500", "--val-size", "500", env=env)  # fmt: skip
    assert worker.returncode == 0, worker.stderr[-3000:]
    status = sweeper_here("status", "quickstart", "--dir", str(tmp_path), "--csv", env=env)
    assert status.returncode == 0 and len(status.stdout.splitlines()) == 4, status.stderr


def test_first_opens_at_once_all_succeed(new_database: Callable[[], str]) -> None:
    """Processes opening a fresh database at once race to create Optuna's tables."""
    for _ in range(3):
        storage = new_database()
        code = f"from sweeper.stores.storage import make_storage; make_storage({storage!r})"
        opens = [
            subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        for process in opens:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]


@pytest.mark.fault
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask and report, not optimize
@pytest.mark.parametrize("table", ["trial_intermediate_values", "trials"])
def test_a_query_cut_off_mid_flight_is_asked_again(
    new_database: Callable[[], str], table: str
) -> None:
    """A restart cuts the connection of a query in flight: the trial's report, or the launcher's
    read of every trial, must not fail.

    The storage's query waits on a table lock held here (the report's UPDATE; the read's SELECT,
    which Optuna answers with a second query on the cut session); its server process is then
    terminated (as a restart does), the lock released, and the query must land on a new
    connection.
    """
    url = new_database()
    storage = make_storage(url)
    study = optuna.create_study(storage=storage, study_name="cut")
    trial = study.ask()
    trial.report(0.25, 1)
    holder = sa.create_engine(url, poolclass=sa.pool.NullPool)
    errors: list[BaseException] = []
    read: list[int] = []

    def query() -> None:
        try:
            if table == "trials":
                read.append(len(storage.get_all_trials(study._study_id)))
            else:
                trial.report(0.5, 2)
        except BaseException as error:
            errors.append(error)

    with holder.connect() as lock, holder.connect() as killer:
        lock.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        asking = threading.Thread(target=query)
        asking.start()
        waiting = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        for _ in range(200):
            pids = killer.execute(waiting).scalars().all()
            if pids:
                break
            time.sleep(0.05)
        assert len(pids) == 1, "the query never waited on the lock"
        ended = sa.text("SELECT pg_terminate_backend(:pid, 30000)")  # waits until it is gone
        assert killer.execute(ended, {"pid": pids[0]}).scalar() is True
        killer.commit()
        lock.rollback()  # releases the lock
        asking.join(timeout=60)
    assert not asking.is_alive() and not errors, errors
    stored = optuna.load_study(study_name="cut", storage=make_storage(url)).trials[0]
    assert stored.intermediate_values == ({1: 0.25} if table == "trials" else {1: 0.25, 2: 0.5})
    assert read == ([1] if table == "trials" else [])
    storage.engine.dispose()
    holder.dispose()


@pytest.mark.fault
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask, not optimize
def test_a_worker_that_lost_its_connection_calls_no_trial_dead_at_once(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage every heartbeat is as old as the outage: a worker that saw it must give
    the live workers the grace period to beat again before it fails and retries their trials."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage_module, "GRACE_S", 2)
    url = new_database()
    trainer, watcher = make_storage(url), make_storage(url)
    study = optuna.create_study(storage=trainer, study_name="stale")
    trial = study.ask()
    trainer.record_heartbeat(trial._trial_id)
    study_id = study._study_id
    time.sleep(3.5)  # the beat is older than the grace period, as after a long outage
    assert watcher._get_stale_trial_ids(study_id) == [trial._trial_id]  # a dead worker's trial

    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as killer:
        cut = sa.text(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert all(killer.execute(cut).scalars().all())
    assert watcher._get_stale_trial_ids(study_id) == []  # it reconnected: an outage just ended
    time.sleep(3.5)  # grace period and heartbeat interval: a live worker would have beaten
    assert watcher._get_stale_trial_ids(study_id) == [trial._trial_id]
    trainer.engine.dispose()
    watcher.engine.dispose()


def _password_rejecting_server(sock: socket.socket) -> None:
    """Speak just enough PostgreSQL wire protocol to ask for a password and reject it.

    The local server trusts 127.0.0.1, so it would accept any password; this stands in for a
    server with password authentication so the client's real error path is exercised.
    """
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            try:
                while True:  # SSLRequest / GSSENCRequest first, then the startup message
                    (length,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
                    body = conn.recv(length - 4, socket.MSG_WAITALL)
                    if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):
                        conn.sendall(b"N")
                        continue
                    break
                conn.sendall(b"R" + struct.pack("!II", 8, 3))  # cleartext password, please
                conn.recv(4096)
                fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "postgres"\0\0'
                conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
            except (OSError, struct.error):
                pass


@pytest.fixture
def password_server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    thread = threading.Thread(target=_password_rejecting_server, args=(sock,), daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize(
    "case", ["typo_scheme", "wrong_database", "unreachable_port", "wrong_password"]
)
def test_bad_storage_is_one_line_and_exit_2(
    case: str, admin: sa.Engine, password_server: int, tmp_path: Path, datasets_dir: Path
) -> None:
    url = admin.url
    storage = {
        "typo_scheme": f"postgresq://postgres@{url.host}:{url.port}/postgres",
        "wrong_database": url.set(database=f"no_such_db_{uuid.uuid4().hex[:8]}"),
        "unreachable_port": url.set(host="127.0.0.1", port=1),
        "wrong_password": url.set(
            host="127.0.0.1", port=password_server, password=SECRET, database="postgres"
        ),
    }[case]
    if not isinstance(storage, str):
        storage = storage.render_as_string(hide_password=False)
    done = subprocess.run(
        launch_args(storage, tmp_path, datasets_dir, "--trials", "3", "--workers", "1"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper: error: --storage:"), done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # it stopped before MLflow and any worker
