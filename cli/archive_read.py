"""``archive list|tail|overview|info|scan``: the read commands, rendered as the spec shows them."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import click

from pycomex_index.cli.common import (
    archive_options,
    batched,
    compile_or_fail,
    explain_option,
    json_option,
    note,
    opened_index,
    report_failures,
    select_option,
    write_json,
    write_json_array,
    write_lines,
    write_utf8_chunks,
)

DEFAULT_GROUP_EXPRESSION = "p.get('__PREFIX__', 'unknown')"
SEPARATOR = "─" * 40
#: Error types listed one by one in overview; the rest are summed up as "Other".
MAX_ERROR_TYPES = 10
DESCRIPTION_LIMIT = 100
#: The largest count a SQL LIMIT takes (a 64-bit signed integer).
SQL_INTEGER_MAX = 2**63 - 1


def _nothing_found(select: str | None) -> None:
    # "No experiments match" and "no archived experiments" are pycomex's words, which scripts look for.
    note("No experiments match the selection." if select else "There are no archived experiments in the archive.")


@click.command("list")
@select_option
@explain_option
@archive_options
@json_option
@click.pass_context
def list_command(ctx, select, explain, archive_path, index_location, as_json) -> None:
    """List experiments with status and duration, oldest first.

    \b
    Examples:
      pycomex-index archive list
      pycomex-index archive list --select "m['status'] == 'done'"
      pycomex-index archive list --json | jq '.[0]'
    """
    from pycomex_index.liveness import RunStates
    from pycomex_index.queries import experiment_as_json, iter_experiments, iter_listing, unreadable_experiments
    from pycomex_index.selection import EvaluationFailures

    selection = compile_or_fail(select)
    failures = EvaluationFailures()
    with opened_index(ctx, archive_path, index_location, read_only_ok=True) as index:
        run_states = RunStates(index)
        if as_json:
            experiments = iter_experiments(
                index, selection, include_unreadable=False, with_parameters=True, failures=failures
            )
            if selection is None:
                experiments = itertools.chain(experiments, unreadable_experiments(index))
            count = write_json_array(experiment_as_json(index, row, run_states) for row in experiments)
        else:
            batches = iter_listing(index, selection, failures)
            if selection is None:
                unreadable = ((row.rel_path, row.outcome, row.duration) for row in unreadable_experiments(index))
                batches = itertools.chain(batches, batched(unreadable, LISTING_BATCH_LINES))
            count = write_utf8_chunks(_listing_text(index, batches, run_states))
    report_failures(failures, explain=explain and selection is not None)
    if not count and not as_json:
        _nothing_found(select)


#: Lines per write for the rows ``list`` gets one by one (those of unreadable experiments).
LISTING_BATCH_LINES = 1000


def _listing_text(index, batches, run_states) -> Iterator[bytes]:
    """``✅ results/neural_net/<run> (2m 15s)``: one line per experiment, as the spec shows, in UTF-8 a batch at a time.

    A run whose status says running is judged (live or interrupted) here, and only such a run.
    The lines are made with an ASCII control character standing for each icon,
    which the encoded batch then gets instead: text with an icon in it takes
    four bytes a character, to build, join and encode (at 100,000 runs, 7% of
    list's instructions went to that). Nothing else in a line is a control
    character: printable() escapes every one in a path.
    """
    import math
    from operator import itemgetter

    from pycomex_index.discovery import Outcome
    from pycomex_index.formatting import (
        STATUS_ICONS,
        WHOLE_SECONDS_FROM,
        all_printable_ascii,
        format_duration,
        format_whole_seconds,
        printable,
        shown_status,
    )

    # printable() escapes character by character: the root's part is worked out once, not on every line.
    prefix = printable(index.display_root + "/")
    # The plain values: a str compares with a str faster than with an enum member, and this runs per row.
    error, running, done, failed = (
        outcome.value for outcome in (Outcome.ERROR, Outcome.RUNNING, Outcome.DONE, Outcome.FAILED)
    )
    icons = {status: chr(1 + number) for number, status in enumerate(STATUS_ICONS)}  # the stand-ins
    encoded_icons = [(code.encode(), STATUS_ICONS[status].encode()) for status, code in icons.items()]
    whole_seconds, first = format_whole_seconds, itemgetter(0)
    # Floats, as the durations are: a float compares with a float much faster than with an int.
    whole_from, infinity = float(WHOLE_SECONDS_FROM), math.inf

    def line(rel_path, outcome, duration, path_as_it_is) -> str:
        """Any row's line (``path_as_it_is``: known printable); the comprehension below makes the common ones itself."""
        shown_path = rel_path if path_as_it_is or rel_path.isprintable() else printable(rel_path)
        # What the parentheses at the end say, put into the line in one piece.
        if outcome == error:
            detail = "metadata error"
        elif outcome == running:
            outcome = detail = shown_status(outcome, run_states.state(rel_path, outcome))
        elif duration is not None and duration > 0:
            detail = format_duration(duration)
        else:
            return f"{icons[outcome]} {prefix}{shown_path}"
        return f"{icons[outcome]} {prefix}{shown_path} ({detail})"

    # One comprehension per batch, no call per row, for a finished run that took ten seconds or more and has a
    # printable path (most lines of a listing): what line() makes of it, by format_duration's own rule for such
    # durations. 100,000 runs: 19% fewer instructions than a generator calling line() per row.
    for rows in batches:
        paths_as_they_are = all_printable_ascii(map(first, rows))
        lines = [
            # duration.__round__() is round(duration) without the builtin's look-up of __round__ (-550 instructions).
            f"{icons[outcome]} {prefix}{rel_path} ({whole_seconds(duration.__round__())})"
            if (outcome == done or outcome == failed)
            and duration is not None
            and whole_from <= duration < infinity
            and (paths_as_they_are or rel_path.isprintable())
            else line(rel_path, outcome, duration, paths_as_they_are)
            for rel_path, outcome, duration in rows
        ]
        if lines:
            text = ("\n".join(lines) + "\n").encode()
            for code, icon in encoded_icons:
                text = text.replace(code, icon)
            yield text


@click.command("tail")
@click.option(
    "-n",
    "--num",
    default=5,
    show_default=True,
    type=click.IntRange(min=0, max=SQL_INTEGER_MAX),
    help="How many experiments.",
)
@select_option
@explain_option
@archive_options
@json_option
@click.pass_context
def tail_command(ctx, num, select, explain, archive_path, index_location, as_json) -> None:
    """Show the most recent experiments in detail, newest first.

    \b
    Examples:
      pycomex-index archive tail
      pycomex-index archive tail -n 10 --select "m['has_error'] == True"
    """
    from pycomex_index.discovery import Outcome
    from pycomex_index.formatting import STATUS_ICONS, format_duration, format_time, printable, shorten, shown_status
    from pycomex_index.liveness import RunStates
    from pycomex_index.queries import experiment_as_json, iter_experiments, load_metadata
    from pycomex_index.selection import EvaluationFailures

    selection = compile_or_fail(select)
    failures = EvaluationFailures()
    with opened_index(ctx, archive_path, index_location, read_only_ok=True) as index:
        rows = list(
            iter_experiments(
                index,
                selection,
                newest_first=True,
                include_unreadable=False,
                limit=num,
                with_parameters=as_json,
                failures=failures,
            )
        )
        run_states = RunStates(index)
        shown = {row.id: shown_status(row.outcome, run_states.state(row.rel_path, row.outcome)) for row in rows}
        descriptions = {}
        for row in rows:
            metadata = load_metadata(index, row) or {}
            description = metadata.get("short_description") or metadata.get("description") or ""
            descriptions[row.id] = description if isinstance(description, str) else str(description)
    if as_json:
        write_json(
            [{**experiment_as_json(index, row, run_states), "description": descriptions[row.id]} for row in rows]
        )
    else:
        blocks = []
        for row in rows:
            blocks.append(
                "\n".join(
                    [
                        f"Experiment: {printable(row.name or row.namespace)}",
                        f"Path: {printable(index.display_path(row.rel_path))}",
                        f"Status: {shown[row.id]} {STATUS_ICONS[shown[row.id]]}"
                        + (f" ({printable(row.error_type)})" if row.error_type else ""),
                        f"Started: {format_time(row.start_time)}",
                        f"Ended: {format_time(row.end_time) if row.outcome != Outcome.RUNNING else f'({shown[row.id]})'}",
                        f"Duration: {format_duration(row.duration) if row.outcome != Outcome.RUNNING else f'({shown[row.id]})'}",
                        f"Description: {printable(shorten(descriptions[row.id], DESCRIPTION_LIMIT)) or '(none)'}",
                    ]
                )
            )
        write_lines([f"\n\n{SEPARATOR}\n\n".join(blocks)] if blocks else [])
    report_failures(failures, explain=explain and selection is not None)
    if not rows and num and not as_json:
        _nothing_found(select)


def _statistics_lines(statistics, heading: str, index, select: str | None, with_namespaces: bool) -> list[str]:
    from pycomex_index.formatting import format_duration, format_percent, format_size, format_time, printable

    total = statistics.total
    lines = [f"{heading} @ {printable(index.root)}"]
    if select:
        lines.append(f"Filtered by: {printable(select)}")
    lines += [
        "",
        "Overview",
        f"Total Experiments: {total}",
        f"Successful: {statistics.successful} ({format_percent(statistics.successful, total)})",
        f"Failed: {statistics.failed} ({format_percent(statistics.failed, total)})",
        f"Running: {statistics.running} ({format_percent(statistics.running, total)})",
        f"Interrupted: {statistics.interrupted} ({format_percent(statistics.interrupted, total)})",
        f"Total Disk Space: {format_size(statistics.disk_usage)}",
        "",
        "Timing Statistics",
        f"First Experiment: {format_time(statistics.first_start_time)}",
        f"Last Experiment: {format_time(statistics.last_start_time)}",
        f"Average Duration: {format_duration(statistics.average_duration)}",
        f"Maximum Duration: {format_duration(statistics.maximum_duration)}",
        f"Total Time: {format_duration(statistics.total_duration)}",
        "",
        "Content Statistics",
        "Parameters per Experiment:",
        *_min_max_average(statistics.parameters_min, statistics.parameters_max, statistics.parameters_average),
        "",
        "Assets per Experiment:",
        *_min_max_average(statistics.assets_min, statistics.assets_max, statistics.assets_average),
        "",
        "Error Analysis",
    ]
    if statistics.error_types:
        lines.append("Error Types:")
        failed = sum(count for _, count in statistics.error_types)
        shown = statistics.error_types[:MAX_ERROR_TYPES]
        others = sum(count for _, count in statistics.error_types[MAX_ERROR_TYPES:])
        for name, count in shown + ([("Other", others)] if others else []):
            lines.append(f"  {printable(name)}: {count} ({format_percent(count, failed)})")
    else:
        lines.append("No failed experiments.")
    if with_namespaces:
        lines += ["", "Namespaces"]
        lines += [f"  {printable(name) or '(archive root)'}: {count}" for name, count in statistics.namespaces]
    return lines


def _min_max_average(minimum, maximum, average) -> list[str]:
    if minimum is None:
        return ["  (no experiments)"]
    return [f"  Min: {minimum}", f"  Max: {maximum}", f"  Average: {average:.1f}"]


def _statistics_command(name: str, heading: str, with_namespaces: bool, docstring: str):
    @click.command(name, help=docstring)
    @select_option
    @explain_option
    @archive_options
    @json_option
    @click.pass_context
    def command(ctx, select, explain, archive_path, index_location, as_json) -> None:
        from pycomex_index.selection import EvaluationFailures
        from pycomex_index.stats import archive_statistics

        selection = compile_or_fail(select)
        failures = EvaluationFailures()
        with opened_index(ctx, archive_path, index_location, read_only_ok=True) as index:
            statistics = archive_statistics(index, selection, failures)
        if as_json:
            write_json({"archive": index.root, "select": select, **statistics.as_json()})
        else:
            write_lines(_statistics_lines(statistics, heading, index, select, with_namespaces))
        report_failures(failures, explain=explain and selection is not None)

    return command


overview_command = _statistics_command(
    "overview",
    "Experiment Archive",
    with_namespaces=False,
    docstring="""Archive statistics: outcomes, timing, content and errors.

    \b
    Examples:
      pycomex-index archive overview
      pycomex-index archive overview --select "m['start_time'] > '2024-01-10'"
    """,
)
info_command = _statistics_command(
    "info",
    "Archive Statistics",
    with_namespaces=True,
    docstring="""Archive statistics like overview, plus the experiments per namespace.

    \b
    Example:
      pycomex-index archive info --select "p['MODEL'] == 'resnet'"
    """,
)


@click.command("scan")
@click.option(
    "--group",
    "group_expression",
    default=DEFAULT_GROUP_EXPRESSION,
    show_default=True,
    metavar="EXPR",
    help="Python expression on m and p whose value names each experiment's group.",
)
@select_option
@explain_option
@archive_options
@json_option
@click.pass_context
def scan_command(ctx, group_expression, select, explain, archive_path, index_location, as_json) -> None:
    """Group experiments by an expression: count, success rate, last completed, runtime, disk use.

    \b
    Examples:
      pycomex-index archive scan
      pycomex-index archive scan --group "p.get('MODEL', 'unknown')"
    """
    from pycomex_index.selection import EvaluationFailures
    from pycomex_index.stats import scan_groups

    selection = compile_or_fail(select)
    group_by = compile_or_fail(group_expression, what="--group")
    failures = EvaluationFailures()
    if select:
        note(f"Applying selection filter: {select}")  # pycomex's line, kept for scripts that look for it
    with opened_index(ctx, archive_path, index_location, read_only_ok=True) as index:
        result = scan_groups(index, group_by, selection, failures)
    if as_json:
        write_json([group.as_json(result.now) for group in result.groups])
    else:
        _print_scan_table(index, result, select, group_expression)
    report_failures(failures, explain=explain and selection is not None)
    report_failures(result.group_failures, what="--group")
    if result.unreadable:
        note(f"Skipped {result.unreadable} experiment(s) with unreadable metadata.")
    if not result.groups and not result.unreadable and not as_json:
        _nothing_found(select)


#: scan's columns; the first is left-aligned, the others right-aligned.
SCAN_COLUMNS = ("Group", "Experiments", "Success Rate", "Last Completed", "Avg Runtime", "Disk Usage")
#: How wide scan's output is when stdout is no terminal (rich's own default would be 80).
SCAN_PIPE_WIDTH = 200


def _print_scan_table(index, result, select, group_expression) -> None:
    """The scan table, rendered whole, then written like every other command's output.

    rich ends the process with status 1 when stdout closes under it (``scan | head -1``);
    captured text goes through ``write_lines``, so a closed pipe ends scan as it ends list.
    Into a pipe or a file, a table rich would draw plainly is drawn here, the same bytes
    without importing rich (a fifth of scan's time at 100,000 runs); a test compares the two.
    """
    import sys

    heading, rows, footer = _scan_text(index, result, select, group_expression)
    if not sys.stdout.isatty():
        lines = _plain_scan_lines(heading, rows, footer)
        if lines is not None:
            write_lines(lines)
            return
    from rich.console import Console

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else SCAN_PIPE_WIDTH, highlight=False)
    with console.capture() as captured:
        _render_scan_table(console, heading, rows, footer)
    write_lines([captured.get().rstrip("\n")])


def _scan_text(index, result, select, group_expression) -> tuple[list[str], list[list[str]], list[str]]:
    """scan's lines above the table, the table's cells (row by row) and its lines below, as text."""
    from pycomex_index.formatting import format_age, format_duration, format_size, printable

    heading = [f"Experiment Archive Scan @ {printable(index.root)}"]
    if select:
        heading.append(f"Filtered by: {printable(select)}")
    heading.append(f"Grouped by: {printable(group_expression)}")
    rows = [
        [
            printable(group.key) or "(empty)",
            str(group.count),
            f"{group.successful}/{group.count} ({group.success_rate:.1f}%)",
            format_age(result.now - group.last_end_time if group.last_end_time is not None else None),
            format_duration(group.average_runtime) if group.average_runtime is not None else "N/A",
            format_size(group.disk_usage),
        ]
        for group in result.groups
    ]
    footer = [f"Summary: {len(result.groups)} group(s), {sum(group.count for group in result.groups)} experiment(s)"]
    if result.interrupted:
        footer.append(
            f"{INTERRUPTED_ICON} {result.interrupted} interrupted: status 'running', but the process is gone "
            "(select them with --select \"m['state'] == 'interrupted'\")"
        )
    return heading, rows, footer


INTERRUPTED_ICON = "💀"


def _render_scan_table(console, heading: list[str], rows: list[list[str]], footer: list[str]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    for line in heading:
        console.print(line, markup=False)
    table = Table(box=box.HORIZONTALS, show_header=True, header_style="bold")
    table.add_column(SCAN_COLUMNS[0], justify="left", no_wrap=True)
    for column in SCAN_COLUMNS[1:]:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*map(Text, row))  # a cell is data, never markup: "[/0]" in one is drawn as it is
    console.print(table)
    for line in footer:
        console.print(line, markup=False)


#: What rich would turn into an emoji (``:smile:``) in a line it prints: such output is left to rich.
_EMOJI_CODE = re.compile(r":\S*?:")
#: Environment variables under which rich styles output that is not a terminal.
_RICH_FORCING_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def _plain_scan_lines(heading: list[str], rows: list[list[str]], footer: list[str]) -> list[str] | None:
    """scan's output into a pipe, as rich draws it there; None where rich might draw it otherwise.

    That is printable ASCII text that fits :data:`SCAN_PIPE_WIDTH` (rich would
    wrap longer lines and measure wide characters), no emoji codes, and no
    variable that makes rich style a pipe, and no space at either end of a
    text. The interrupted line's icon (two cells wide) is the one non-ASCII
    text allowed, below the table.
    """
    import os

    from pycomex_index.formatting import ruled_table_lines

    if any(variable in os.environ for variable in _RICH_FORCING_VARIABLES):
        return None
    texts = heading + [cell for row in rows for cell in row] + [line.replace(INTERRUPTED_ICON, "XX") for line in footer]
    if not all(_plain(text) for text in texts):
        return None
    table = ruled_table_lines(SCAN_COLUMNS, rows)
    if len(table[0]) > SCAN_PIPE_WIDTH:
        return None
    return heading + table + footer


def _plain(text: str) -> bool:
    # Spaces at either end: rich strips some of them.
    return (
        text.isascii()
        and text.isprintable()
        and len(text) <= SCAN_PIPE_WIDTH
        and text.strip() == text
        and not _EMOJI_CODE.search(text)
    )
