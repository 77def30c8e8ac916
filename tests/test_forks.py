"""Workers forked from the fork server behave as the processes their command lines would start:
the launcher's folder and environment as they are when it starts them, their command line in
`ps`, the launch context on stdin. Stand-in commands, no training: seconds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import command_line

from sweeper.pool.forks import Forked

REPORT = """
import json, os, pathlib, sys, time
seen = {"cwd": os.getcwd(), "env": os.environ.get("SWEEPER_TEST_MARK"), "argv": sys.argv,
        "line": sys.stdin.readline()}
pathlib.Path(sys.argv[2]).write_text(json.dumps(seen))
time.sleep(float(sys.argv[1]))
"""


def test_a_forked_command_sees_the_launcher_now_and_shows_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_TEST_MARK", "set after the fork server started")
    out = tmp_path / "seen.json"
    command = [sys.executable, "-c", REPORT, "1.5", str(out), "--worker-name", "w3"]
    worker = Forked(command)
    worker.give("the context\n")
    deadline = time.monotonic() + 60
    while "--worker-name w3" not in command_line(worker.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert command_line(worker.pid).strip() == " ".join(command)
    assert worker.wait(timeout=60) == 0
    assert json.loads(out.read_text()) == {
        "cwd": str(tmp_path),
        "env": "set after the fork server started",
        "argv": ["-c", "1.5", str(out), "--worker-name", "w3"],
        "line": "the context\n",
    }


def test_a_worker_whose_launcher_hands_nothing_reads_the_end_and_exit_codes_come_back() -> None:
    worker = Forked(
        [sys.executable, "-c", "import sys; sys.exit(7 if sys.stdin.readline() == '' else 0)"]
    )
    worker.writer.close()  # as when the launcher dies before it made the context
    assert worker.wait(timeout=60) == 7 and worker.poll() == 7
    sleeper = Forked([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.1)
    sleeper.kill()
    assert sleeper.wait(timeout=60) == -9


def test_a_script_that_starts_workers_is_not_run_again_in_them(tmp_path: Path) -> None:
    """multiprocessing's spawn rule would import the launcher's main script in each child: a
    script that launches a study (the Python API) would launch it again there."""
    script = tmp_path / "launching.py"
    runs = tmp_path / "runs"
    script.write_text(f"""
import pathlib, sys
with open({str(runs)!r}, "a") as f:
    f.write("ran\\n")
from sweeper.pool.forks import Forked
worker = Forked([sys.executable, "-c", "print('worker ran')"])
sys.exit(worker.wait(timeout=60))
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "worker ran" in done.stdout
    assert runs.read_text() == "ran\n"


# What a worker opens first: its Optuna storage and its MLflow client on the embedded stores.
OPEN_STORES = """
import json, pathlib, sys
before = set(sys.modules)
from sweeper.stores.storage import make_storage
from sweeper.stores.tracking.client import RetryingClient
make_storage(f"sqlite:///{sys.argv[1]}/optuna.db")
RetryingClient(f"sqlite:///{sys.argv[1]}/mlflow.db").raw.search_experiments()
pathlib.Path(sys.argv[1], sys.argv[2]).write_text(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_forked_worker_opens_the_embedded_stores_without_importing_anew(tmp_path: Path) -> None:
    """Sixteen workers importing MLflow's SQL store and alembic at once took seconds of start."""
    opened = [sys.executable, "-c", OPEN_STORES, str(tmp_path)]
    subprocess.run([*opened, "first.json"], check=True)  # the launcher made the stores
    assert Forked([*opened, "new.json"]).wait(timeout=120) == 0
    new = json.loads((tmp_path / "new.json").read_text())
    packages = ("mlflow", "alembic", "optuna", "torch")
    migrations = re.compile(r".*_[0-9a-f]{12}")  # what MLflow's schema check reads from its files
    assert [m for m in new if m.split(".")[0] in packages and not migrations.fullmatch(m)] == []


def test_a_command_of_another_program_is_refused() -> None:
    with pytest.raises(ValueError, match="not a command of this Python"):
        Forked(["/bin/sleep", "1"])


def test_a_launcher_at_its_exit_ends_its_fork_server_at_once(tmp_path: Path) -> None:
    """No second of tearing torch down. In a process of its own: this one's other tests share
    their fork server."""
    script = tmp_path / "ending.py"
    script.write_text("""
import sys, time
from multiprocessing import forkserver
from helpers import running
from sweeper.pool.forks import Forked, end_before_exit
assert Forked([sys.executable, "-c", "pass"]).wait(timeout=60) == 0
server = forkserver._forkserver._forkserver_pid
assert running(server)
end_before_exit()
deadline = time.monotonic() + 5
while running(server):
    assert time.monotonic() < deadline, "the fork server is still there"
    time.sleep(0.05)
""")
    path = os.pathsep.join([os.getcwd(), str(Path(__file__).parent)])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_fork_server_that_dies_importing_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A broken install kills the server as it imports: the launcher says so in one line."""
    (tmp_path / "brokenmod.py").write_text("raise RuntimeError('a broken torch')\n")
    script = tmp_path / "forking.py"
    script.write_text("""
import sys
from sweeper.errors import SweeperError
from sweeper.pool import forks
forks.PRELOAD.append("brokenmod")
try:
    forks.Forked([sys.executable, "-c", "pass"])
except SweeperError as error:
    sys.exit(f"sweeper: error: {error}")
""")
    path = os.pathsep.join([os.getcwd(), str(tmp_path)])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "RuntimeError: a broken torch" in done.stderr  # the server's own error, above
    assert done.stderr.strip().splitlines()[-1] == (
        "sweeper: error: the workers' fork server ended before it started a worker; its error"
        " is above"
    )
