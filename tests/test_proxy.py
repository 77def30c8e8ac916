"""`sweeper storage-proxy`: a real gRPC proxy process in front of a SQLite storage, and sweeps
that reach it with `--storage grpc://HOST:PORT`."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import QUICKSTART, SWEEPER, free_port, sweeper_here

TINY = ["--epochs", "1", "--train-size", "500", "--val-size", "500",
        "--no-progress"]  # fmt: skip


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
    done = sweeper_here("storage-proxy", "--storage", "postgresq://u:s3cretpw@127.0.0.1/x")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("sweeper: error: --storage:")
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cretpw" not in done.stderr


def test_a_launch_and_a_worker_through_the_proxy(
    proxy: tuple[int, str], tmp_path: Path, datasets_dir: Path
) -> None:
    port, storage = proxy
    url = f"grpc://127.0.0.1:{port}"
    flags = ["--storage", url, "--dir", str(tmp_path / "sweep"), "--data-dir", str(datasets_dir)]
    done = sweeper_here("launch", QUICKSTART, *flags, "--trials", "2", "--workers", "1", *TINY,
                        "--no-ensemble")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [line for line in done.stderr.splitlines() if "heartbeats" in line]
    assert len(notes) == 1, done.stderr
    assert notes[0].startswith(f"sweeper: note: through the storage proxy at {url} ")
    joined = sweeper_here("worker", QUICKSTART, *flags, "--trials", "3", *TINY[:-1])
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "trials send no heartbeats" in joined.stderr
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials  # the database
    assert [t.state.name in ("COMPLETE", "PRUNED") for t in trials] == [True] * 3
    assert {t.user_attrs["worker"] for t in trials} >= {"w0"}


@pytest.mark.parametrize("url", ["grpc://127.0.0.1", "grpc://127.0.0.1:{port}"])
def test_a_storage_proxy_that_is_not_there_is_one_line(url: str, tmp_path: Path) -> None:
    port = free_port()
    done = sweeper_here("status", "quickstart", "--dir", str(tmp_path), "--storage",
                   url.format(port=port))  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper: error: --storage"), done.stderr
    if "{port}" in url:
        assert f"no storage proxy answers at 127.0.0.1:{port}" in lines[0]
    else:
        assert "grpc://HOST:PORT" in lines[0]
