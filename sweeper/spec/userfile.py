"""Importing a user's Python file (a study or a dashboard): a mistake is one line with its place."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from sweeper.errors import SweeperError, first_line

# modules whose functions are model builders by design (their own code, no side effects)
TRUSTED_MODULES = "torchvision.models,timm"
SWEEPER_CODE = Path(__file__).resolve().parents[1]


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


def module_name_of(path: Path) -> str:
    """The module name a user's file is imported under: one per file on this machine."""
    return f"sweeper_study_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def import_path(path: Path) -> ModuleType:
    """A user's file as a module, imported once per process (load_study's import counts)."""
    name = module_name_of(path)
    if name not in sys.modules:
        sys.modules[name] = import_file(path, name)
    return sys.modules[name]


def is_reference(value: object) -> bool:
    """Whether a config value names a user's function ("module:function", "file.py:function")."""
    return isinstance(value, str) and ":" in value


def reference(function: Callable, field: str) -> str:
    """The reference a config stores for a user's function (a model builder, a data function)."""
    name = getattr(function, "__name__", "")
    if not inspect.isfunction(function) or function.__qualname__ != name or name == "<lambda>":
        raise SweeperError(
            f"{field}: {function!r} is not a function defined at the top of a file; define it"
            " with `def` at the top level of the study file or of a module"
        )
    module = function.__module__
    if module == "__main__" or module.startswith("sweeper_study_"):
        file = inspect.getsourcefile(function)
        if module == "__main__" and (file is None or not Path(file).is_file()):
            raise SweeperError(
                f"{field}: {name} is defined in a notebook or console, which the workers cannot"
                " import; move it into a .py file (the study file, or a module) and import it"
            )
        return f"{Path(file).resolve()}:{name}"
    return f"{module}:{name}"


def resolve(ref: str, field: str) -> Callable:
    """The function a reference names (its module imported once per process)."""
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise SweeperError(f"{field}: {ref}: no such file {where}; the function lives there")
        module = import_path(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise SweeperError(
                f"{field}: {ref}: cannot import {where} ({first_line(exc)}); install it, or add"
                " its folder to PYTHONPATH where the workers run"
            ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SweeperError(f"{field}: {ref}: {where} defines no function {name!r}")
    _check_trusted(ref, field, function)
    return function


def _check_trusted(ref: str, field: str, function: Callable) -> None:
    """Refuse a function of Python's own library, of an installed package or of sweeper unless
    its module is trusted: a reference may come from a shared store, and any file there is
    public, so its hash would not stop a forged `subprocess:getoutput`."""
    module = getattr(function, "__module__", None) or ""
    trusted = os.environ.get("SWEEPER_TRUSTED_MODULES", TRUSTED_MODULES).split(",")
    if any(module == t.strip() or module.startswith(t.strip() + ".") for t in trusted if t):
        return
    try:
        file = Path(inspect.getsourcefile(function) or "").resolve()
    except TypeError:  # a built-in function: no file at all
        file = Path(sys.prefix)
    if any(file.is_relative_to(folder) for folder in _installed()):
        raise SweeperError(
            f"{field}: {ref} is a function of the Python installation or of sweeper ({file}),"
            " which sweeper does not call for you; write your own function in your own file, or"
            " add its module to $SWEEPER_TRUSTED_MODULES"
        )


PACKAGE_FOLDERS = ("site-packages", "dist-packages")  # pip's, and Debian's


@functools.cache
def _installed() -> frozenset[Path]:
    """The folders of the Python installation, its packages (those a .pth file or PYTHONPATH
    adds too, as a venv borrowing another's) and sweeper."""
    folders = {Path(p).resolve() for p in sysconfig.get_paths().values()}
    folders |= {Path(p).resolve() for p in sys.path if Path(p).name in PACKAGE_FOLDERS}
    return frozenset({*folders, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
                      SWEEPER_CODE})  # fmt: skip


def code_hash(ref: str) -> str:
    """The sha256 (16 hex digits) of the file that defines a referenced function."""
    function = resolve(ref, "model")
    where = ref.rpartition(":")[0]
    file = where if where.endswith(".py") else inspect.getsourcefile(function)
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]


def raised(call: str, exc: BaseException) -> str:
    """`call raised Type: message (file:line)`: where a user's function failed, in one line."""
    place = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{call} raised {one_line(exc)} ({place.filename}:{place.lineno})"


def line_in(exc: BaseException, path: Path) -> int | str:
    """The line of `path` the exception passed through last, or '?'."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else "?"


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    text = first_line(exc) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")
