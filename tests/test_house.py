"""The shape of the package, checked from its source: one concern a folder, no import circle, small
modules and functions, and worker processes that import nothing of the launcher."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "sweeper"
LAUNCHER_SIDE = ("sweeper.sweep", "sweeper.pool.local", "sweeper.pool.ray",
                 "sweeper.pool.supervisor", "sweeper.report")  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The sweeper modules a module imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_one_concern_a_folder() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert len(top) <= 8, top
    assert len(packages) >= 6, packages


def test_modules_and_functions_stay_small() -> None:
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        assert len(path.read_text().splitlines()) <= 400, name
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{name}.{node.name}"


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name in done:
            return
        for other in graph[name]:
            visit(other, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_a_worker_process_imports_nothing_of_the_launcher() -> None:
    """A worker runs `python -m sweeper.cli worker`: cli's own imports and the worker loop's,
    with everything they import (inside functions too), hold no launcher-side module."""
    known = modules()
    cli = ast.parse(known["sweeper.cli"].read_text())
    top = [n for node in cli.body if isinstance(node, ast.ImportFrom) and node.module
           for n in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
           if n in known]  # fmt: skip
    seen, todo = set(), ["sweeper.worker.loop", *top]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += list(imports(known[name], known))
    assert "sweeper.pool.interface" in seen
    assert not [n for n in seen if n.startswith(LAUNCHER_SIDE)]
