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
        # The later ones go to a handler that does nothing, not to SIG_IGN: Ctrl-C reaches a
        # worker with its launcher's SIGTERM, often both before Python runs this handler, and
        # Python prints "OSError: Signal 15 ignored due to race condition" for a signal it
        # caught whose handler is SIG_IGN by the time it gets to it.
        signal.signal(signal.SIGTERM, _ignore)
        signal.signal(signal.SIGINT, _ignore)
        STOPPING.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _ignore(signum: int, frame: Any) -> None:
    """A signal after the first: the process is stopping already."""
