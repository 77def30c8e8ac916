"""Process helpers shared by the tests that signal the processes they started."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The ids of a process's children, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
