"""The command server's process: ``python -m pycomex_index.cli.serve WATCHER_PID`` (see
:mod:`pycomex_index.command_server`).

The watcher starts it beside itself; it imports what the read commands use,
then forks a worker per command, each running the command as ``pycomex-index``
would. It ends with its watcher.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import click

from pycomex_index.cli import cli
from pycomex_index.command_server import serve, servers_turned_off
from pycomex_index.launch import SERVED_COMMANDS

#: Imported before the first fork, so no worker imports them again: what the read commands import as they run.
WARM_MODULES = (
    "pycomex_index.cli.archive_read",
    "pycomex_index.heartbeat",
    "pycomex_index.liveness",
    "pycomex_index.queries",
    "pycomex_index.selection",
    "pycomex_index.stats",
    "pycomex_index.sync",
    # Imported where they are first used (a connection, a document read): 3 ms of every worker's run otherwise.
    "orjson",
    "sqlite3",
)


def served(argv: list[str]) -> bool:
    """The command line names ``archive`` and then one of :data:`SERVED_COMMANDS`, as click parses it."""
    group: click.Command | None = cli
    path: list[str] = []
    arguments = list(argv)
    while isinstance(group, click.Group) and len(path) < 2:
        context = click.Context(group, info_name=group.name, resilient_parsing=True)
        # The group's own options parsed (--path VALUE...): what is left starts with the subcommand.
        rest = click.Command.parse_args(group, context, arguments)
        if not rest:
            return False
        path.append(rest[0])
        group, arguments = group.get_command(context, rest[0]), rest[1:]
    return len(path) == 2 and path[0] == "archive" and path[1] in SERVED_COMMANDS and group is not None


def run(argv: list[str]) -> int:
    """Run a command line as the ``pycomex-index`` process would (its exit raises SystemExit)."""
    cli.main(args=argv, prog_name="pycomex-index")
    return 0


def start_command_server(log_file: str | None) -> subprocess.Popen | None:
    """Start the server beside this process (the watcher), its errors appended to ``log_file``; it ends when this
    process does. None: not wanted."""
    if servers_turned_off():
        return None
    with open(log_file or os.devnull, "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pycomex_index.cli.serve", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # a Ctrl-C meant for a foreground watcher is its to pass on, not the server's
            close_fds=True,
        )


def main() -> None:
    watcher = int(sys.argv[1])
    for module in WARM_MODULES:
        importlib.import_module(module)
    try:
        serve(serves=served, run=run, while_parent=watcher)
    except OSError as error:  # a folder of another user's, a socket path too long...: commands run on their own
        print(f"pycomex-index: not serving commands: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
