"""The one error type users see: the CLI prints it as one line and exits with code 2."""

from typing import Any


class SweeperError(Exception):
    """Bad input or a missing resource, with a message that names the field and the fix."""


def bad_value(where: str, key: str, value: Any, fix: str) -> SweeperError:
    """The one-line error for a bad setting: `where: key=value is invalid; fix`."""
    return SweeperError(f"{where + ': ' if where else ''}{key}={value!r} is invalid; {fix}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
