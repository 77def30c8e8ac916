"""Importing a user's Python file (a study or a dashboard): a mistake is one line with its place."""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path
from types import ModuleType

from sweeper.errors import SweeperError, first_line


def import_file(path: Path, module_name: str) -> ModuleType:
    """Run the file as a module; a syntax error or a raise becomes `file:line: reason`."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise SweeperError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise SweeperError(f"{path}:{line_in(exc, path)}: {one_line(exc)}") from None
    return module


def line_in(exc: BaseException, path: Path) -> int | str:
    """The line of `path` the exception passed through last, or '?'."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else "?"


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    text = first_line(exc) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")
