"""`sweeper storage-proxy`: a real gRPC proxy process in front of a SQLite storage."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import SWEEPER, free_port, sweeper


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port, storage = free_port(), f"sqlite:///{tmp_path / 'optuna.db'}"
    server = subprocess.Popen(
        [SWEEPER, "storage-proxy", "--storage", storage, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while True:  # wait until it listens
        assert server.poll() is None, server.communicate()[0]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.time() < deadline, "the proxy did not start listening"
        time.sleep(0.2)
    yield port, storage
    server.terminate()
    server.wait(timeout=30)


def test_studies_through_the_proxy_land_in_the_storage(proxy: tuple[int, str]) -> None:
    port, storage = proxy
    client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
    study = optuna.create_study(study_name="via-proxy", storage=client, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="via-proxy", storage=client)
    assert len(again.trials) == 3
    direct = optuna.load_study(study_name="via-proxy", storage=storage)
    assert [t.params for t in direct.trials] == [t.params for t in again.trials]


def test_a_bad_storage_is_one_line() -> None:
    done = sweeper("storage-proxy", "--storage", "postgresq://u:s3cretpw@127.0.0.1/x", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("sweeper: error: --storage:")
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cretpw" not in done.stderr
