"""The library's imports run one way: disk helpers → index → queries → write commands / watcher → CLI.

A module may import its own layer and the layers below it, never one above;
the library never imports click (the CLI is the only place that does). Read
from the source with ``ast``, so a lazy import inside a function counts too.
The project's own modules are imported at the top of a module, never inside
a function, so the order of imports is plain to see.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycomex_index

LIBRARY = Path(pycomex_index.__file__).parent

#: Library modules that may import click: the pycomex plugin puts a click group into pycomex's CLI,
#: and that group is built outside cli/ because importing cli/ would cost every experiment 25-45 ms.
CLICK_ALLOWED = frozenset({"plugin"})

#: Every library module's layer; a new module must be placed here, so its place is a decision.
LAYERS: dict[str, int] = {
    # 0: disk helpers and plain values: no index, no other layer
    "errors": 0,
    "formatting": 0,
    "paths": 0,
    "atomic": 0,
    "discovery": 0,
    "walk": 0,
    # 1: the index: connection, schema, rows, keeping it in step with the disk
    "db": 1,
    "query_ahead": 1,
    "postgresql": 1,
    "models": 1,
    "store": 1,
    "archives": 1,
    "rows": 1,
    "exports": 1,
    "lease": 1,
    "heartbeat": 1,
    "liveness": 1,
    "sync": 1,
    "sync_process": 1,
    "bulk_load": 1,
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
    "live_runs": 3,
    "command_server": 3,
    # 4: the command line (the package's cli/ folder) and the entry points
    "cli": 4,
    "__main__": 4,
    "launch": 4,
    # pycomex's entry points: the plugin module pycomex imports, and the plugin it registers
    "main": 4,
    "plugin": 4,
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
    """Absolute names of what ``path`` imports; a relative import is resolved against the file's package."""
    package = ["pycomex_index", *path.relative_to(LIBRARY).parent.parts]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            imported.add(module)
            imported.update(f"{module}.{alias.name}" for alias in node.names)
    return imported


@pytest.mark.parametrize(("module", "path"), _library_modules(), ids=lambda value: str(value))
def test_a_library_module_imports_no_layer_above_its_own(module: str, path: Path) -> None:
    assert module in LAYERS, f"{module} has no layer: place it in LAYERS"
    above = []
    for name in _imported_modules(path):
        parts = name.split(".")
        if parts[0] == "click" and module not in CLICK_ALLOWED:
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


#: Exceptions defined outside errors.py: internal signals, each caught inside the library and never
#: raised to its callers, so no caller needs to know them.
INTERNAL_SIGNALS = {
    "selection.ExpressionExit": "user code called exit(): counted as a failed evaluation",
    "modify.ModificationFailed": "one experiment's change failed: reported in the modify report",
    "sync_process.Stopping": "abandons a sync when the watcher stops",
    "sync_process.SyncProcessError": "a full sync failed in its child process: logged, and retried",
    "sync_process.SilentChild": "no sync child answered: full syncs run in the watcher's process instead",
    "watcher/watches.WatchLimitReached": "switches the watcher to polling",
}


def _is_exception_class(node: ast.ClassDef) -> bool:
    return any(
        isinstance(base, (ast.Name, ast.Attribute)) and ast.unparse(base).endswith(("Error", "Exception"))
        for base in node.bases
    )


def test_the_library_defines_the_exceptions_it_raises_in_errors_only() -> None:
    elsewhere = []
    for _, path in _library_modules():
        name = str(path.relative_to(LIBRARY).with_suffix(""))
        if name == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.ClassDef)
                and _is_exception_class(node)
                and f"{name}.{node.name}" not in INTERNAL_SIGNALS
            ):
                elsewhere.append(f"{name}.{node.name}")
    assert not elsewhere, f"define these in pycomex_index/errors.py: {elsewhere}"


#: Imports of the project's own modules made inside a function, each kept there on purpose (an import cycle,
#: an import budget): ``"module: imported module"`` -> why. Third-party modules (SQLAlchemy, Alembic, watchdog, rich)
#: are another matter: they stay lazy so that start-up stays fast.
FUNCTION_LEVEL_IMPORTS: dict[str, str] = {
    "plugin: pycomex_index.live_runs": "pycomex imports the plugin in every experiment process: the index "
    "layer loads only when a run starts or ends (the plugin's import budget is 5 ms)",
    "plugin: pycomex_index.cli.pycomex_commands": "the indexed commands cost 25-45 ms to import: built only "
    "when `pycomex archive` is used, not at every pycomex start",
    "command_server: pycomex_index.paths": "the launcher imports command_server before every command and nothing "
    "of the library besides (tests/test_startup.py); a server's parent is looked up for `daemon status` alone",
}


def _function_level_imports(tree: ast.AST) -> Iterator[str]:
    """The project modules imported inside a function (relative imports count as the project's)."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "pycomex_index")
            elif isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == "pycomex_index"
            ):
                yield "." * node.level + (node.module or "")


def test_library_modules_import_the_project_at_the_top_not_inside_functions() -> None:
    found = set()
    for _, path in _library_modules():
        name = str(path.relative_to(LIBRARY).with_suffix(""))
        found.update(f"{name}: {module}" for module in _function_level_imports(ast.parse(path.read_text(), str(path))))
    assert found - FUNCTION_LEVEL_IMPORTS.keys() == set(), "move these imports to the top of their module"
    assert FUNCTION_LEVEL_IMPORTS.keys() - found == set(), "no longer imported inside a function: drop from the list"


IMPORT_EACH_ALONE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [module for module in sys.modules if module == "pycomex_index" or module.startswith("pycomex_index.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as error:
        failed.append(f"{name}: {error}")
print("\\n".join(failed))
"""


def test_every_library_module_can_be_imported_first_so_no_top_level_import_makes_a_cycle() -> None:
    names = sorted(
        "pycomex_index." + ".".join(path.relative_to(LIBRARY).with_suffix("").parts).removesuffix(".__init__")
        for _, path in _library_modules()
        if path.name != "__main__.py"
    )
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *names], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
