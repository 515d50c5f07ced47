"""The ``pycomex-index`` command line: thin click commands over the library.

Each command parses its options, calls one library function and renders the
result. The groups here are lazy: a command's module is imported only when
that command runs (or shows its own help), so ``--help`` and every command
load only what they use. Subcommand modules import only click and the project's
cheap modules at module level; the library's working parts load inside the commands.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pycomex_index import __version__
from pycomex_index.cli.common import CleanErrorsGroup, archive_options, install_library_logging

#: Group -> command name -> (module in pycomex_index.cli, its attribute, the first sentence of its help).
#: The sentence is what the group's help lists, so listing imports none of the modules; tests/test_startup.py
#: checks that each one is the command's own short help.
LAZY_COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "pycomex-index": {
        "watch": (
            "watch_commands",
            "watch_command",
            "Keep the index up to date while experiments run, in the foreground (Ctrl-C stops).",
        ),
        "daemon": (
            "watch_commands",
            "daemon_group",
            "Run the watcher in the background: one per archive, with a pid file and a log.",
        ),
    },
    "archive": {
        "list": ("archive_read", "list_command", "List experiments with status and duration, oldest first."),
        "tail": ("archive_read", "tail_command", "Show the most recent experiments in detail, newest first."),
        "overview": ("archive_read", "overview_command", "Archive statistics: outcomes, timing, content and errors."),
        "info": (
            "archive_read",
            "info_command",
            "Archive statistics like overview, plus the experiments per namespace.",
        ),
        "scan": (
            "archive_read",
            "scan_command",
            "Group experiments by an expression: count, success rate, last completed, runtime, disk use.",
        ),
        "delete": (
            "archive_write",
            "delete_command",
            "Delete experiments: their folders on disk and their rows in the index.",
        ),
        "compress": (
            "archive_write",
            "compress_command",
            "Compress experiments into a ZIP in pycomex's layout (results/<path>/...) and record the export.",
        ),
        "modify": (
            "archive_write",
            "modify_command",
            "Change parameters or metadata of experiments with Python code, safely and reversibly.",
        ),
        "undo": ("archive_write", "undo_command", "Restore the files the last `archive modify` (or modify N) changed."),
    },
    "index": {
        "sync": (
            "index_commands",
            "sync_command",
            "Bring the index up to date with the archive (only changed experiments are read).",
        ),
        "status": (
            "index_commands",
            "status_command",
            "Where the index is, how many rows it holds, its schema revision and the last sync.",
        ),
    },
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is looked up (to run it or show its help).

    ``lazy_commands``: name -> (module, attribute, short help), as in :data:`LAZY_COMMANDS`. Listing the
    group (its ``--help``) shows the short help from the table and imports nothing.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str, str]] | None = None, **keywords: Any):
        super().__init__(*args, **keywords)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy_commands:
            module, attribute, _ = self.lazy_commands[name]
            self.add_command(getattr(importlib.import_module(f"pycomex_index.cli.{module}"), attribute), name)
        return self.commands.get(name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command, imported now (for a caller that needs the command objects themselves)."""
        for name in self.lazy_commands:
            self.get_command(None, name)
        return dict(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version looks every command up (importing it) to ask for its short help.
        names = [
            name for name in self.list_commands(ctx) if name in self.lazy_commands or not self.commands[name].hidden
        ]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                # Shortened as click shortens a command's help (a stand-in command, so no private helper).
                rows.append((name, click.Command(name, help=self.lazy_commands[name][2]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class RootGroup(CleanErrorsGroup, LazyGroup):
    """The ``pycomex-index`` group: clean one-line errors, lazily imported commands."""


@click.group(
    cls=RootGroup,
    lazy_commands=LAZY_COMMANDS["pycomex-index"],
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="pycomex-index")
def cli() -> None:
    """Fast, safe pycomex archive commands backed by a SQLite index.

    \b
    Examples:
      pycomex-index archive --path ./results list
      pycomex-index archive tail -n 10 --select "m['has_error'] == True"
      pycomex-index index status
    """
    install_library_logging()


@cli.group("archive", cls=LazyGroup, lazy_commands=LAZY_COMMANDS["archive"])
@archive_options
@click.pass_context
def archive(ctx: click.Context, archive_path: str | None, index_location: str | None) -> None:
    """Query and maintain an experiment archive (pycomex's `archive` commands).

    \b
    Example:
      pycomex-index archive --path ./results overview
    """
    ctx.obj = {"archive_path": archive_path, "index_location": index_location}


@cli.group("index", cls=LazyGroup, lazy_commands=LAZY_COMMANDS["index"])
def index_group() -> None:
    """Build and inspect the index itself.

    \b
    Example:
      pycomex-index index sync --path ./results
    """


def main() -> None:
    cli(prog_name="pycomex-index")
