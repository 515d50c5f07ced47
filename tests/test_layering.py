"""The library's imports run one way: disk helpers → index → queries → write commands / watcher → CLI.

A module may import its own layer and the layers below it, never one above;
the library never imports click (the CLI is the only place that does). Read
from the source with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pycomex_index

LIBRARY = Path(pycomex_index.__file__).parent

#: Every library module's layer; a new module must be placed here, so its place is a decision.
LAYERS: dict[str, int] = {
    # 0: disk helpers and plain values: no index, no other layer
    "errors": 0,
    "formatting": 0,
    "paths": 0,
    "atomic": 0,
    "discovery": 0,
    # 1: the index: connection, schema, rows, keeping it in step with the disk
    "db": 1,
    "models": 1,
    "store": 1,
    "archives": 1,
    "rows": 1,
    "exports": 1,
    "heartbeat": 1,
    "sync": 1,
    # 2: questions asked of the index
    "selection": 2,
    "pushdown": 2,
    "queries": 2,
    "stats": 2,
    "status": 2,
    # 3: write commands and the watcher
    "operations": 3,
    "compress": 3,
    "delete": 3,
    "modify": 3,
    "journal": 3,
    "undo": 3,
    "pidfile": 3,
    "watcher": 3,
    "daemon": 3,
    # 4: the command line (the package's cli/ folder) and the entry points
    "cli": 4,
    "__main__": 4,
    "__init__": 0,
    "migrations": 1,
}


def _library_modules() -> list[tuple[str, Path]]:
    """(top-level module name below pycomex_index, file) for every library file, the watcher package included."""
    modules = []
    for path in sorted(LIBRARY.rglob("*.py")):
        relative = path.relative_to(LIBRARY)
        if relative.parts[0] in ("cli", "migrations"):
            continue  # installed inside the package from the top-level cli/ and migrations/ folders
        modules.append((relative.parts[0].removesuffix(".py"), path))
    return modules


def _imported_modules(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return imported


@pytest.mark.parametrize(("module", "path"), _library_modules(), ids=lambda value: str(value))
def test_a_library_module_imports_no_layer_above_its_own(module: str, path: Path) -> None:
    assert module in LAYERS, f"{module} has no layer: place it in LAYERS"
    above = []
    for name in _imported_modules(path):
        parts = name.split(".")
        if parts[0] == "click":
            above.append(name)
        elif parts[0] == "pycomex_index" and len(parts) > 1 and parts[1] in LAYERS:
            if LAYERS[parts[1]] > LAYERS[module]:
                above.append(name)
    assert not above, f"pycomex_index/{path.relative_to(LIBRARY)} imports from above its layer: {sorted(above)}"


def test_no_library_file_is_too_long_to_read() -> None:
    too_long = {
        str(path.relative_to(LIBRARY)): length
        for _, path in _library_modules()
        if (length := len(path.read_text().splitlines())) > 600
    }
    assert not too_long
