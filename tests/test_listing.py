"""``archive list`` as text: every line as the per-row rule makes it, however the rows are batched.

The listing formats a batch of rows in one comprehension that writes the
common case itself and leaves the rest to a per-row function; these tests put
every kind of row on both sides of batch boundaries and compare each line
with the rule, written out here once more (the oracle), with states and
durations taken from ``--json``, which goes its own way (the index keeps
finite durations only: NaN and infinity are listed as no duration).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycomex_index import queries
from pycomex_index.formatting import STATUS_ICONS, all_printable_ascii, format_duration, printable
from tests.conftest import make_metadata, write_meta

#: Durations on either side of each of format_duration's rules, and the values it calls unknown.
DURATIONS = [None, math.nan, math.inf, -1.0, 0.0, 0.08, 5.0, 9.999, 10.0, 10.5, 59.5, 135.2, 3600.0, 20250.4, 1e7]
#: Folder names list escapes, put among the plain ones.
ODD_NAMES = ["new\nline", "esc\x1b[31m", "tab\there", "caf\u00e9"]


def _dead_pid() -> int:
    """The pid of a process that has ended (so a folder named after it is a run whose process is gone)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _listing_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Finished runs with every duration, odd names among them, running runs live and interrupted, a broken file.

    Runs are taken for interrupted after an hour without a change (the default; conftest sets 0 for every test),
    which the interrupted one's backdated files are past and the live one's are not.
    """
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    archive = tmp_path / "results"
    start = 1700000000.0
    for number, duration in enumerate(DURATIONS * 2):
        status = "done" if number % 3 else "failed"
        # An odd name every few runs, so some batches hold one and others none.
        name = f"run{number:02d}" + (ODD_NAMES[number // 5 % len(ODD_NAMES)] if number % 5 == 4 else "")
        metadata = make_metadata(
            status=status,
            has_error=status == "failed",
            start_time=start + number,
            duration=duration,
            # SQL holds no integer beyond a float's exact range: p['X'] < 12 is for Python alone to find true there.
            parameters={"X": -(2**60) if number % 4 == 1 and number >= 12 else number},
        )
        write_meta(archive / "ns" / name, metadata)
    now = time.time()
    # Running runs, judged by the pid in their folder names: this process is alive, the other one is gone.
    for name, pid in (("live", os.getpid()), ("gone", _dead_pid())):
        folder = archive / "ns" / f"01_01_2026__00_00_00__p{pid}__{name}"
        write_meta(folder, make_metadata(status="running", start_time=now - 60, end_time=None, duration=0))
    old = now - 7200
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (old, old))
    write_meta(archive / "ns" / "broken", "{ not json")
    return archive


def _expected_line(rel_path: str, status: str, state: str | None, duration: float | None) -> str:
    """One ``list`` line by the rule of the spec, row by row."""
    shown = "interrupted" if status == "running" and state == "interrupted" else status
    line = f"{STATUS_ICONS[shown]} results/{printable(rel_path)}"
    if status == "error":
        return line + " (metadata error)"
    if status == "running":
        return f"{line} ({shown})"
    if duration is not None and duration > 0:
        return f"{line} ({format_duration(duration)})"
    return line


def _expected_listing(run_cli, archive: Path, select: str | None = None) -> str:
    arguments = ["archive", "list", "--path", str(archive), "--json"] + (["--select", select] if select else [])
    result = run_cli(*arguments)
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    lines = [_expected_line(item["rel_path"], item["status"], item["state"], item["duration"]) for item in items]
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_every_line_follows_the_per_row_rule_across_batch_boundaries(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    archive = _listing_archive(tmp_path, monkeypatch)
    monkeypatch.setattr(queries, "_BATCH_ROWS", batch_rows)
    expected = _expected_listing(run_cli, archive)
    # The runs the test is about are all there: live, interrupted, escaped names and the broken file last.
    assert "⏳ results/ns/01_01_2026__00_00_00__p" in expected and "💀 results/ns/01_01_2026__00_00_00__p" in expected
    assert "ns/run04new\\nline" in expected and "ns/run09esc\\x1b[31m" in expected
    assert expected.endswith("❌ results/ns/broken (metadata error)\n")
    assert "(0.08s)" in expected and "(9.999s)" not in expected and "(10.00s)" in expected and "(10s)" in expected

    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert result.stdout == expected


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_select_lists_rows_sql_decides_and_rows_python_decides_in_their_order(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    archive = _listing_archive(tmp_path, monkeypatch)
    monkeypatch.setattr(queries, "_BATCH_ROWS", batch_rows)
    select = "p['X'] < 12"
    expected = _expected_listing(run_cli, archive, select)
    kept = {line.split(" ", 2)[1] for line in expected.splitlines()}
    by_the_files = {
        f"results/ns/{printable(name)}"
        for name in os.listdir(archive / "ns")
        if name.startswith("run") and (int(name[3:5]) < 12 or int(name[3:5]) % 4 == 1)
    }
    assert kept == by_the_files

    result = run_cli("archive", "list", "--path", str(archive), "--select", select, "--explain")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected
    # Both kinds of row were there to be mixed up.
    in_python, in_sql = map(
        int, re.findall(r"on the (\d+) experiments left; SQL alone selected (\d+) more", result.stderr)[0]
    )
    assert in_python >= 5 and in_sql >= 5, result.stderr


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([], True),
        (["ns/run", " spaced ~"], True),
        (["ns/run", "new\nline"], False),
        (["del\x7f"], False),
        (["caf\u00e9"], False),
        (["\ud800"], False),
    ],
)
def test_printable_ascii_is_told_for_a_whole_batch(texts: list[str], expected: bool) -> None:
    assert all_printable_ascii(texts) is expected


@given(st.lists(st.text(max_size=8), max_size=5))
def test_printable_ascii_texts_are_the_ones_printable_leaves_alone(texts: list[str]) -> None:
    if all_printable_ascii(texts):
        assert all(printable(text) == text for text in texts)
    assert all_printable_ascii(texts) == all(text.isascii() and text.isprintable() for text in texts)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_real_stdout_gets_the_same_text_in_its_own_encoding(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """UTF-8 goes to stdout's binary buffer as it was encoded; any other encoding gets the text through stdout."""
    archive = _listing_archive(tmp_path, monkeypatch)
    expected = _expected_listing(run_cli, archive)
    listed = subprocess.run(
        [sys.executable, "-m", "pycomex_index", "archive", "list", "--path", str(archive)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": encoding},
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode(encoding) == expected
