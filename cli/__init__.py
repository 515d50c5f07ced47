"""The ``pycomex-index`` command line: thin click commands over the library.

Each command parses its options, calls one library function and renders the
result. Subcommand modules import only click at module level.
"""

from __future__ import annotations

import click

from pycomex_index import __version__
from pycomex_index.cli.common import (
    DEFAULT_ARCHIVE_PATH,
    CleanErrorsGroup,
    install_library_logging,
)


@click.group(cls=CleanErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.group("archive")
@click.option(
    "--path",
    "archive_path",
    default=None,
    metavar="RESULTS_PATH",
    help=f"Archive location (default: {DEFAULT_ARCHIVE_PATH}).",
)
@click.option(
    "--index",
    "index_location",
    default=None,
    metavar="FILE|URL",
    help="Index file or SQLAlchemy URL (env PYCOMEX_INDEX).",
)
@click.pass_context
def archive(ctx: click.Context, archive_path: str | None, index_location: str | None) -> None:
    """Query and maintain an experiment archive (pycomex's `archive` commands).

    \b
    Example:
      pycomex-index archive --path ./results overview
    """
    ctx.obj = {"archive_path": archive_path, "index_location": index_location}


@cli.group("index")
def index_group() -> None:
    """Build and inspect the index itself.

    \b
    Example:
      pycomex-index index sync --path ./results
    """


from pycomex_index.cli import archive_read, archive_write, index_commands  # noqa: E402  (commands register on import)

archive_read.register(archive)
archive_write.register(archive)
index_commands.register(index_group)

from pycomex_index.cli import watch_commands  # noqa: E402

watch_commands.register(cli)


def main() -> None:
    cli(prog_name="pycomex-index")
