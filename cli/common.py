"""What every command shares: archive options, opening a fresh index, output, progress, and clean errors.

Only click and the standard library are imported at module level, so
``--help`` starts fast; the library and rich are imported when a command runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

DEFAULT_ARCHIVE_PATH = "./results"
#: Below this many files to read, a progress bar would only flicker.
PROGRESS_THRESHOLD = 200
#: A read command whose walk took longer than this suggests the daemon (env PYCOMEX_INDEX_HINT_AFTER, in seconds).
DAEMON_HINT_AFTER_SECONDS = 1.0
#: The daemon hint is given at most once in this many seconds per archive.
DAEMON_HINT_EVERY_SECONDS = 24 * 3600
#: Beside the archive's daemon pid file: its modification time is when the hint was last given.


def archive_options(command: Callable) -> Callable:
    """``--path`` and ``--index`` on a subcommand, so they work before or after its name."""
    command = click.option(
        "--index",
        "index_location",
        default=None,
        metavar="FILE|URL",
        help="Index file or SQLAlchemy URL (default: <archive>/.pycomex_index/index.sqlite3; env PYCOMEX_INDEX).",
    )(command)
    command = click.option(
        "--path",
        "archive_path",
        default=None,
        metavar="RESULTS_PATH",
        help=f"Archive location (default: {DEFAULT_ARCHIVE_PATH}).",
    )(command)
    return command


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")(command)


def select_option(command: Callable) -> Callable:
    return click.option(
        "--select",
        default=None,
        metavar="EXPR",
        help="Python expression on m (metadata) and p (parameters); only experiments where it is true.",
    )(command)


def explain_option(command: Callable) -> Callable:
    return click.option(
        "--explain", is_flag=True, help="Say on stderr which part of --select ran in SQL and which in Python."
    )(command)


def archive_location(
    ctx: click.Context, archive_path: str | None, index_location: str | None
) -> tuple[str, str | None]:
    """The archive and index named on the subcommand, else on the ``archive`` group, else the defaults."""
    group_settings = ctx.find_object(dict) or {}
    return (
        archive_path or group_settings.get("archive_path") or DEFAULT_ARCHIVE_PATH,
        index_location or group_settings.get("index_location"),
    )


@contextlib.contextmanager
def opened_index(
    ctx: click.Context,
    archive_path: str | None,
    index_location: str | None,
    *,
    refresh: bool = True,
    read_only_ok: bool = False,
):
    """The archive's index, brought up to date first (unless ``refresh=False``) with a progress bar.

    ``read_only_ok``: the command only reads, so an index that cannot be
    written is used as it is, with a warning. Damage is mended by the library
    (:func:`pycomex_index.sync.open_refreshed_index`, :func:`pycomex_index.sync.mending_damage`).
    """
    from pycomex_index.sync import SyncReport, mending_damage, open_refreshed_index

    path, location = archive_location(ctx, archive_path, index_location)
    synced: list[SyncReport] = []  # the report of the sync made while opening, if one was made (for the daemon hint)
    with progress_bar("Indexing experiments") as on_progress:
        index, not_updated = open_refreshed_index(
            path, location, refresh=refresh, read_only_ok=read_only_ok, on_progress=on_progress, on_synced=synced.append
        )
    if not_updated:
        warn(f"{not_updated}; results may be stale")
    hint = daemon_hint(ctx, index, synced[0], path, location) if synced and read_only_ok else None
    with mending_damage(index):
        yield index
    if hint:
        ctx.call_on_close(lambda: give_daemon_hint(*hint))  # after the command's output, written after this block


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int | None], None] | None]:
    """A ``(done, total)`` callback drawing a rich progress bar on stderr, or None when stderr is no terminal.

    It shows the count, the rate and, once ``total`` is known (not None), the time left.
    """
    if not sys.stderr.isatty() or os.environ.get("PYCOMEX_INDEX_NO_PROGRESS"):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Experiments a second, over rich's recent samples (its own speed column counts bytes)."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? runs/s" if speed is None else f"{speed:,.0f} runs/s", style="progress.data.speed")

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = None

    def on_progress(done: int, total: int | None) -> None:
        # total is None while a sync is still walking the archive: the bar then shows the count and rate, no ETA.
        nonlocal task
        if (done if total is None else total) < PROGRESS_THRESHOLD:
            return
        if task is None:
            progress.start()
            task = progress.add_task(label, total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield on_progress
    finally:
        if task is not None:
            progress.stop()


def write_lines(lines: Iterable[str], chunk_size: int = 5000) -> int:
    """Lines on stdout, a few thousand per write, as they are produced; returns how many.

    Per-line printing is what makes long listings slow; holding a million
    lines to write them at once is what makes them big.
    """
    count = 0
    for chunk in batched(lines, chunk_size):
        sys.stdout.write("\n".join(chunk) + "\n")
        count += len(chunk)
    sys.stdout.flush()
    return count


def write_utf8_chunks(chunks: Iterable[bytes]) -> int:
    """Text already encoded in UTF-8 on stdout, one write per chunk, as the chunks are produced; returns how many bytes.

    Into stdout's binary buffer when stdout writes UTF-8 anyway; else each
    chunk is decoded and written as text, so stdout's own encoding decides, as
    for every other command.
    """
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    encoding = (getattr(out, "encoding", None) or "").lower().replace("_", "-")
    if encoding not in ("utf-8", "utf8"):
        buffer = None
    out.flush()  # what was written as text before goes first
    written = 0
    for chunk in chunks:
        if buffer is not None:
            buffer.write(chunk)
        else:
            out.write(chunk.decode())
        written += len(chunk)
    (out if buffer is None else buffer).flush()
    return written


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of up to ``size``."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _json_text(document: Any, pretty: bool) -> str:
    import orjson

    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 if pretty else 0).decode()
    except TypeError:
        # Integers beyond 64 bits or lone surrogates, which orjson refuses: the json module writes them exactly
        # (surrogates as \u escapes, since ensure_ascii), and json_ready spells out any NaN or Infinity.
        import json

        from pycomex_index.queries import json_ready

        separators = None if pretty else (",", ":")
        return json.dumps(
            json_ready(document), indent=2 if pretty else None, separators=separators, allow_nan=False, default=str
        )


def write_json(document: Any) -> None:
    """One JSON document on stdout (indented for a person at a terminal)."""
    sys.stdout.write(_json_text(document, sys.stdout.isatty()) + "\n")
    sys.stdout.flush()


def write_json_array(items: Iterable[Any], chunk_size: int = 2000) -> int:
    """A JSON array written as it is produced, in chunks: memory stays flat however long the listing."""
    pretty = sys.stdout.isatty()
    out = sys.stdout
    out.write("[")
    count = 0
    for chunk in batched(items, chunk_size):
        out.write(("," if count else "") + ",".join(_json_text(item, pretty) for item in chunk))
        count += len(chunk)
    out.write("]\n")
    out.flush()
    return count


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def note(message: str) -> None:
    """Information for a person (not a result): stderr, so stdout stays machine-readable."""
    click.echo(message, err=True)


def compile_or_fail(source: str | None, *, what: str = "--select", mode: str = "eval"):
    """Compile an expression, or None when none was given (errors surface as usage errors)."""
    if source is None:
        return None
    from pycomex_index.selection import compile_expression

    return compile_expression(source, mode=mode, what=what)


def report_failures(failures, what: str = "--select", explain: bool = False) -> None:
    """One line on stderr for experiments on which an expression raised (they were not selected)."""
    if explain:
        if failures.pushed_down:
            note(
                f"{what} in SQL (it drops only rows Python would drop, and selects without Python only rows "
                f"Python would select): {'; '.join(failures.pushed_down)}"
            )
            note(f"  WHERE {failures.sql_condition}")
        else:
            note(f"{what} in SQL: nothing (no part of it translates exactly)")
        note(
            f"{what} in Python: the whole expression, on the {failures.evaluated} experiments left"
            + (f"; SQL alone selected {failures.selected_in_sql} more" if failures.selected_in_sql else "")
        )
    if failures.count:
        from pycomex_index.formatting import plural

        warn(
            f"{what} raised on {plural(failures.count, 'experiment')}, "
            f"which {'were' if failures.count != 1 else 'was'} not selected: {failures.summary()}"
        )


#: The handler install_library_logging adds (made once, so installing twice adds it once).
_warnings_handler: Any = None


def install_library_logging() -> None:
    """Library warnings (an index set aside, a file skipped) reach the user as ``Warning:`` lines.

    logging is imported here, when a command runs: ``--help`` does without it (a few ms).
    """
    global _warnings_handler
    import logging

    if _warnings_handler is None:

        class StderrWarnings(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                warn(record.getMessage())

        _warnings_handler = StderrWarnings(level=logging.WARNING)
    logger = logging.getLogger("pycomex_index")
    if _warnings_handler not in logger.handlers:
        logger.addHandler(_warnings_handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


class CleanErrorsGroup(click.Group):
    """Turns the library's errors (and disk-full, interrupts, anything unexpected) into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as cat does, and keep Python from
            # complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as error:  # noqa: BLE001 - the one place that keeps tracebacks from users
            message, exit_code = describe_error(error)
            if os.environ.get("PYCOMEX_INDEX_DEBUG"):
                raise
            click.echo(f"Error: {message}", err=True)
            ctx.exit(exit_code)


def describe_error(error: BaseException) -> tuple[str, int]:
    """A one-line message and exit code for any error that reaches the CLI."""
    import errno

    from pycomex_index.db import FULL_MESSAGE
    from pycomex_index.errors import IndexFullError, PycomexIndexError

    if isinstance(error, PycomexIndexError):
        return str(error), error.exit_code
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:  # a full disk met outside the index (a ZIP, a file)
        return FULL_MESSAGE, IndexFullError.exit_code
    # One line: a database error's text goes on with the SQL statement and its parameters.
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line} (set PYCOMEX_INDEX_DEBUG=1 for a traceback)", 1


# ------------------------------------------------------------------------------ the daemon hint


def daemon_hint(ctx: click.Context, index: Any, report: Any, path: str, location: str | None) -> tuple[str, str] | None:
    """The hint that the daemon would spare a read command its walk, and the file remembering it; None when not due.

    Due when the walk took over :data:`DAEMON_HINT_AFTER_SECONDS`, for a person
    only: never when stderr is not a terminal (a log or a cron job: nobody to
    act on it, and it would use up the day's hint), never with ``--json`` on a
    pipe (a program reads the output), never while a watcher runs (one still
    catching up walks too); at most once a day per archive. The day is
    remembered in the daemon's hint file beside its pid file, never in the
    index, which may be read-only.
    """
    from pycomex_index.liveness import seconds_from_environment

    if report.walk_seconds <= seconds_from_environment("PYCOMEX_INDEX_HINT_AFTER", DAEMON_HINT_AFTER_SECONDS):
        return None
    if not sys.stderr.isatty() or (ctx.params.get("as_json") and not sys.stdout.isatty()):
        return None
    from pycomex_index.daemon import daemon_files, live_lease

    if live_lease(index) is not None:
        return None
    stamp = daemon_files(index.root, index.location).hint_path
    try:
        given_ago = time.time() - os.stat(stamp).st_mtime
    except OSError:
        given_ago = None
    if given_ago is not None and 0 <= given_ago < DAEMON_HINT_EVERY_SECONDS:
        return None
    import shlex

    group_settings = ctx.find_object(dict) or {}
    command = "pycomex archive daemon start" if group_settings.get("archive_command") else "pycomex-index daemon start"
    if path != DEFAULT_ARCHIVE_PATH:
        command += f" --path {shlex.quote(path)}"
    if location:
        command += f" --index {shlex.quote(location)}"
    return (
        f"Hint: checking the archive for changes took {report.walk_seconds:.1f} s; `{command}` keeps the index "
        "up to date in the background, so commands skip that check (this hint: at most once a day).",
        stamp,
    )


def give_daemon_hint(message: str, stamp: str) -> None:
    """Show the hint once the command is done, if it succeeded and the time can be remembered.

    Run as the command's context closes: an exception on its way out (an
    error, a closed pipe) is still being handled then, and gets no hint after
    it. Unless the time is remembered, the hint would come back at every command.
    """
    if sys.exc_info()[1] is not None:
        return
    try:
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        with open(stamp, "w", encoding="utf-8") as file:
            file.write(time.strftime("%Y-%m-%d %H:%M:%S %z\n"))
    except OSError:
        return
    note(message)
