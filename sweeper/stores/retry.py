"""Waiting out a store that is down or restarting: the one retry loop of MLflow and Optuna calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retried(
    call: Callable[[], T],
    *,
    retry: Callable[[Exception], bool],
    wait_s: float,
    pause: float = 0.5,
    max_pause: float = 10.0,
    on_wait: Callable[[Exception], None] | None = None,
    on_back: Callable[[], None] | None = None,
) -> T:
    """call() until it returns. An error that `retry` accepts is tried again after a pause that
    doubles up to max_pause, for up to wait_s seconds; then, or for any other error, it is raised.
    on_wait sees the first error waited on; on_back runs when a call succeeds after waiting."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            result = call()
        except Exception as error:
            if not retry(error) or time.monotonic() + pause > deadline:
                raise
            if not waited and on_wait is not None:
                on_wait(error)
            waited = True
            time.sleep(pause)
            pause = min(pause * 2, max_pause)
            continue
        if waited and on_back is not None:
            on_back()
        return result
