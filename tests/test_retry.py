"""stores.retry (the one loop that waits out a store that is down) and what storage errors show of
a URL: plain functions, no server."""

from __future__ import annotations

import time

import pytest

from sweeper.stores.retry import retried
from sweeper.stores.storage import redact


class Flaky:
    """Fails `failures` times with `error`, then returns "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_a_retried_error_is_tried_again_with_growing_pauses() -> None:
    call = Flaky(3, ConnectionError("down"))
    seen, back = [], []
    started = time.monotonic()
    result = retried(call, retry=lambda e: isinstance(e, ConnectionError), wait_s=5, pause=0.01,
                     on_wait=seen.append, on_back=lambda: back.append(True))  # fmt: skip
    assert result == "ok" and call.calls == 4
    assert [str(e) for e in seen] == ["down"]  # the first error waited on, once
    assert back == [True]
    assert 0.07 <= time.monotonic() - started < 2  # 0.01 + 0.02 + 0.04


def test_another_error_is_raised_at_once() -> None:
    call = Flaky(1, ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):
        retried(call, retry=lambda e: isinstance(e, ConnectionError), wait_s=5, pause=0.01)
    assert call.calls == 1


def test_the_error_is_raised_once_the_wait_is_over() -> None:
    call = Flaky(100, ConnectionError("still down"))
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        retried(call, retry=lambda e: True, wait_s=0.5, pause=0.05, max_pause=0.05)
    assert time.monotonic() - started < 3
    assert 2 <= call.calls <= 11  # about one a pause, while the wait lasts


def test_no_wait_no_callbacks() -> None:
    back: list[bool] = []
    assert retried(lambda: 7, retry=lambda e: True, wait_s=0, on_back=lambda: back.append(1)) == 7
    assert back == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cret@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
        ("postgresql+psycopg2://bob:p@ss@word@host/db", "postgresql+psycopg2://bob:***@host/db"),
        ("postgresql://carol@host/db", "postgresql://carol:***@host/db"),
        ("sqlite:////tmp/sweeps/optuna.db", "sqlite:////tmp/sweeps/optuna.db"),
        ("grpc://proxy:13000", "grpc://proxy:13000"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cret" not in redact(url) and "word" not in redact(url).split("@")[0]
