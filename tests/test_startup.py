"""Start-up: ``--help`` and a command load only what they use (the timings are in benchmarks/run_benchmarks.py).

The groups of :mod:`pycomex_index.cli` are lazy: a command's module is
imported when the command is looked up, and a group's help lists its commands
from the short helps in ``LAZY_COMMANDS``, which must stay the commands' own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.helpers_write import freeze_index

COMMAND_MODULES = {
    "pycomex_index.cli.archive_read",
    "pycomex_index.cli.archive_write",
    "pycomex_index.cli.index_commands",
    "pycomex_index.cli.watch_commands",
    "pycomex_index.cli.pycomex_commands",
}
#: What the commands use and a help text does not: the library, its databases and its renderers.
HEAVY_FOR_HELP = {
    "pycomex_index.sync",
    "pycomex_index.store",
    "pycomex_index.db",
    "pycomex_index.discovery",
    "pycomex_index.formatting",
    "pycomex_index.queries",
    "pycomex_index.liveness",
    "sqlite3",
    "orjson",
    "logging",
    "sqlalchemy",
    "alembic",
    "rich",
    "watchdog",
}


def _modules_loaded_by(arguments: list[str], cwd: Path) -> set[str]:
    script = (
        "import sys\n"
        f"sys.argv = ['pycomex-index', *{arguments!r}]\n"
        "try:\n"
        "    from pycomex_index.cli import main\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)
    return set(result.stderr.split())


@pytest.mark.parametrize("arguments", [["--help"], ["archive", "--help"], ["index", "--help"]])
def test_help_imports_no_command_module_nor_what_the_commands_use(arguments: list[str], tmp_path: Path) -> None:
    modules = _modules_loaded_by(arguments, tmp_path)
    assert "pycomex_index.cli" in modules
    # Below the top level the root group's callback has run, and it installs the library's logging.
    heavy = HEAVY_FOR_HELP if arguments == ["--help"] else HEAVY_FOR_HELP - {"logging"}
    assert not (COMMAND_MODULES | heavy) & modules


def test_a_commands_help_imports_its_own_module_only(tmp_path: Path) -> None:
    modules = _modules_loaded_by(["archive", "tail", "--help"], tmp_path)
    assert "pycomex_index.cli.archive_read" in modules
    assert not (COMMAND_MODULES - {"pycomex_index.cli.archive_read"}) & modules
    assert not {"pycomex_index.sync", "sqlite3", "rich"} & modules


@pytest.mark.sqlite_only(
    "pins the modules of the SQLite path (sqlite3, no SQLAlchemy); PostgreSQL is reached through SQLAlchemy"
)
def test_tail_with_a_live_watcher_imports_only_what_it_reads_with(archive: Path, run_cli) -> None:
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    freeze_index(archive)  # a live watcher's heartbeat: no walk, no write
    modules = _modules_loaded_by(["archive", "--path", str(archive), "tail"], archive.parent)
    assert {"pycomex_index.cli.archive_read", "pycomex_index.queries", "sqlite3"} <= modules
    assert not (COMMAND_MODULES - {"pycomex_index.cli.archive_read"}) & modules
    # rich draws progress bars and tables; socket and hashlib (OpenSSL) cost milliseconds for one rare call each.
    assert not {"sqlalchemy", "alembic", "rich", "watchdog", "socket", "hashlib", "shutil"} & modules


def test_the_entry_point_asks_a_command_server_with_nothing_heavy_loaded(tmp_path: Path) -> None:
    # What a served command's client loads, found a server or not: no click, no library, not even typing or json.
    script = (
        "import sys\n"
        "from pycomex_index import launch, command_server\n"
        "command_server.run_in_server(['archive', 'list'], may_serve=launch.may_be_served)\n"
        "sys.stderr.write('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    modules = set(result.stderr.split())
    assert {"pycomex_index.launch", "pycomex_index.command_server"} <= modules
    ours = {name for name in modules if name.startswith("pycomex_index")}
    assert ours == {"pycomex_index", "pycomex_index.launch", "pycomex_index.command_server"}
    # Beyond what the interpreter loads anyway (an editable install's path finder loads re and typing).
    bare = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stderr.write('\\n'.join(sys.modules))"], capture_output=True, text=True
    )
    heavy = {"click", "typing", "json", "re", "sqlite3", "logging"} - set(bare.stderr.split())
    assert heavy and not heavy & modules


def _lazy_groups():
    from pycomex_index.cli import LazyGroup, cli

    def walk(group):
        if isinstance(group, LazyGroup):
            yield group
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            if isinstance(command, click.Group):
                yield from walk(command)

    return list(walk(cli))


def test_every_lazy_short_help_is_the_commands_own() -> None:
    groups = _lazy_groups()
    assert {group.name for group in groups} == {"cli", "archive", "index"}
    for group in groups:
        for name, (module, attribute, short_help) in group.lazy_commands.items():
            command = group.get_command(None, name)
            assert command is getattr(sys.modules[f"pycomex_index.cli.{module}"], attribute)
            for limit in (30, 45, 66, 200):
                shown = click.Command(name, help=short_help).get_short_help_str(limit)
                assert shown == command.get_short_help_str(limit), f"{group.name} {name}: update LAZY_COMMANDS"


def test_a_lazy_group_lists_its_commands_as_click_would_once_they_are_loaded() -> None:
    from pycomex_index.cli import LazyGroup, cli

    for group in _lazy_groups():
        # A fresh copy, none of whose lazy commands is loaded yet, beside a plain group holding them all.
        defined_here = {name: command for name, command in group.commands.items() if name not in group.lazy_commands}
        lazy = LazyGroup(
            group.name, params=group.params, help=group.help, commands=defined_here, lazy_commands=group.lazy_commands
        )
        eager = click.Group(group.name, params=group.params, help=group.help, commands=group.all_commands())
        with click.Context(cli) as parent:
            assert lazy.get_help(click.Context(lazy, parent=parent, info_name=group.name)) == eager.get_help(
                click.Context(eager, parent=parent, info_name=group.name)
            )


@pytest.mark.sqlite_only(
    "pins the modules of the SQLite path (sqlite3, no SQLAlchemy); PostgreSQL is reached through SQLAlchemy"
)
def test_a_read_command_on_a_current_index_does_not_import_alembic_or_sqlalchemy(archive: Path) -> None:
    first = _modules_loaded_by(["archive", "list", "--path", str(archive)], archive.parent)
    assert "alembic" in first  # the new index was created by the migrations
    again = _modules_loaded_by(["archive", "list", "--path", str(archive)], archive.parent)
    assert "pycomex_index.queries" in again
    assert not {"alembic", "sqlalchemy"} & again
