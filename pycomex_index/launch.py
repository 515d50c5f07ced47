"""The ``pycomex-index`` entry point: a read command runs in a warm command server when one runs, else here.

Nothing here imports click: a served command's client never loads it (see
:mod:`pycomex_index.command_server`), and the CLI is imported only to run a
command in this process.
"""

from __future__ import annotations

import importlib
import sys

from pycomex_index.command_server import run_in_server

#: The ``archive`` commands a command server runs: those that only read and never ask anything on stdin.
SERVED_COMMANDS = frozenset({"list", "tail", "overview", "info", "scan"})


def may_be_served(argv: list[str]) -> bool:
    """A cheap first look (the server parses the line exactly): ``archive`` and a read command are in it."""
    return "archive" in argv and not SERVED_COMMANDS.isdisjoint(argv)


def main() -> None:
    code = run_in_server(sys.argv[1:], may_serve=may_be_served)
    if code is not None:
        raise SystemExit(code)
    # Imported by name, as the lazy groups import commands: importing click is the cost a server saves.
    importlib.import_module("pycomex_index.cli").main()
