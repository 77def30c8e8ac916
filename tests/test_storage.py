"""The Optuna storage that sweeper's workers share."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from sweeper.stores.storage import make_storage

# Each process asks for queued trials until the queue is empty, as ensemble workers do.
ASK_ALL = """
import json, sys, time
import optuna
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
