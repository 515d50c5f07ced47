"""How durations, sizes, times and statuses are written for people: one place for each."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Sequence

from pycomex_index.discovery import Outcome

#: By outcome, plus ``interrupted``: a run whose status says running but whose process is gone
#: (pycomex_index.liveness). A plain str from the index finds its icon too (an Outcome hashes as its value).
STATUS_ICONS: dict[str, str] = {
    Outcome.DONE: "✅",
    Outcome.FAILED: "❌",
    Outcome.RUNNING: "⏳",
    Outcome.ERROR: "❌",
    "interrupted": "💀",
}


def shown_status(outcome: str, state: str | None) -> str:
    """The word (and key of :data:`STATUS_ICONS`) a run is shown with: its outcome, or ``interrupted``."""
    return "interrupted" if outcome == Outcome.RUNNING and state == "interrupted" else outcome


#: From here up, a finite duration is written in whole seconds: :func:`format_duration` of it is
#: ``format_whole_seconds(round(seconds))``, which a loop over many durations may call directly.
WHOLE_SECONDS_FROM = 10


def format_duration(seconds: float | None) -> str:
    """``2m 15s``, ``5h 37m 30s``, ``45s``; fractions below ten seconds keep two decimals (``0.08s``)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < WHOLE_SECONDS_FROM and seconds != int(seconds):
        return f"{seconds:.2f}s"
    return format_whole_seconds(round(seconds))


@functools.lru_cache(maxsize=1 << 16)
def format_whole_seconds(whole: int) -> str:
    """:func:`format_duration` of a whole number of seconds."""
    # Cached: a listing formats one duration per line, and a whole archive has far fewer distinct whole seconds
    # than runs (13,600 among 100,000): the lookup costs a third of the arithmetic and the f-string.
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_size(size: float) -> str:
    """Binary units with one decimal: ``145.2 MB``, ``2.5 GB``, ``512 B``."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def format_time(timestamp: float | None) -> str:
    """Local time as ``2024-01-15 10:30:45`` (pycomex's clock is the local one)."""
    if timestamp is None:
        return "unknown"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return "unknown"


def format_age(seconds: float | None) -> str:
    """How long ago, as scan shows it: hours under two days, then days."""
    if seconds is None:
        return "N/A"
    hours = seconds / 3600
    return f"{hours:.1f} hours ago" if hours < 48 else f"{hours / 24:.1f} days ago"


def plural(count: int, word: str) -> str:
    """``1 experiment``, ``3 experiments``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"


def shorten(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, ending in ``...`` when cut."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: max(limit - 3, 0)].rstrip() + "..."


def printable(text: str) -> str:
    """``text`` with everything a terminal would not show as one character escaped (``\\n``, ``\\x1b``, ``\\ud800``).

    A newline in a folder name must not split its ``list`` line, an escape
    sequence in a description must not reach the terminal, and a lone
    surrogate cannot be written to stdout at all.
    """
    if text.isprintable():
        return text
    return "".join(
        character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
        for character in text
    )


#: The ASCII characters :meth:`str.isprintable` rejects.
_ASCII_CONTROL = bytes(range(0x20)) + b"\x7f"


def all_printable_ascii(texts: Iterable[str]) -> bool:
    """Whether every one of ``texts`` is printable ASCII (so :func:`printable` leaves it as it is), tested at once.

    ``isprintable()`` looks each character up in the Unicode tables (~25
    instructions a character); here the texts are joined, encoded and swept
    for control characters in C, about a third of that.
    """
    joined = "".join(texts)
    if not joined.isascii():
        return False
    encoded = joined.encode("ascii")
    return len(encoded.translate(None, _ASCII_CONTROL)) == len(encoded)


def ruled_table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A table between horizontal rules, laid out as rich's ``box.HORIZONTALS`` lays out text one cell per character.

    Each column is as wide as its widest cell plus a space each side; the first
    column is left-aligned, the others right-aligned; every line starts and
    ends with a space, where rich puts the box's (blank) edges.
    """
    widths = [max([len(header), *(len(row[column]) for row in rows)]) for column, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first, *others = cells
        aligned = [first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(others, widths[1:], strict=True))]
        return "  " + "   ".join(aligned) + "  "

    rule = " " + "─" * (sum(widths) + 3 * len(widths) - 1) + " "
    return [rule, line(headers), rule, *(line(row) for row in rows), rule]
