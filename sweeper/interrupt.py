"""How a sweeper process stops: the first SIGTERM or SIGINT raises KeyboardInterrupt once, and
STOPPING stays set whatever became of that error (a library may turn it into another)."""

from __future__ import annotations

import signal
import threading
from typing import Any

STOPPING = threading.Event()  # set by the first SIGTERM or SIGINT
EXIT_INTERRUPTED = 130  # the exit code of a process stopped by Ctrl-C or SIGTERM


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt once; a second one must not cut the clean-up."""

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        STOPPING.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
