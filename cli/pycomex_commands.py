"""``pycomex archive …`` as pycomex-index: the indexed commands in place of pycomex's own archive group.

The pycomex plugin (:mod:`pycomex_index.plugin`) puts a stand-in into pycomex's
CLI from its ``cli_register_commands`` hook, which calls :func:`pycomex_archive_group`
the first time the group is used. The group keeps pycomex's
name and its ``--path`` option (default ``./results``); its commands are the
very ones of ``pycomex-index archive``, with pycomex's option names, plus
``undo`` and the ``index``/``daemon``/``watch`` commands, which pycomex lacks.
"""

from __future__ import annotations

import click

from pycomex_index.cli.common import CleanErrorsGroup, install_library_logging

ARCHIVE_GROUP_NAME = "archive"


def pycomex_archive_group() -> click.Group:
    """A fresh ``archive`` group holding the indexed commands (ours stay untouched for ``pycomex-index``)."""
    from pycomex_index.cli import archive as indexed_archive
    from pycomex_index.cli import index_group, watch_commands

    @click.pass_context
    def remember_archive(ctx: click.Context, archive_path: str | None, index_location: str | None) -> None:
        install_library_logging()
        ctx.obj = {"archive_path": archive_path, "index_location": index_location, "archive_command": "pycomex archive"}

    group = CleanErrorsGroup(
        ARCHIVE_GROUP_NAME,
        params=list(indexed_archive.params),
        callback=remember_archive,
        short_help="Command group for managing archived experiments (indexed by pycomex-index).",
        help=(
            "Query and maintain an experiment archive through its pycomex-index index.\n\n"
            "Set PYCOMEX_INDEX_PLUGIN=0 to get pycomex's own archive commands back.\n\n"
            "\b\nExamples:\n"
            "  pycomex archive --path ./results list\n"
            "  pycomex archive tail -n 10 --select \"m['has_error'] == True\"\n"
            "  pycomex archive index status"
        ),
    )
    for name, command in indexed_archive.all_commands().items():  # lazy there: imported here, all at once
        group.add_command(command, name)
    group.add_command(index_group, "index")
    watch_commands.register(group)
    return group
