"""scan groups in SQL when the group expression reads one key, and gets exactly what Python grouping gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pycomex_index.selection import compile_expression
from pycomex_index.stats import scan_groups
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import make_metadata, sqlite_plan, statements_sent, write_meta

VALUES = [
    "resnet",
    "mlp",
    1,
    1.0,
    0.001,
    0.1 + 0.2,
    1e-05,
    True,
    None,
    [128, 64],
    {"a": 1},
    2**70,
    float("nan"),
    "None",
    "",  # the empty string is a value: not the missing key, which the GROUP BY spells as the empty text
    "naïve ünïcode",
    "nul\x00inside",
    "lone \udcff surrogate",  # no database stores it: experiments.prefix stays NULL and Python reads the document
]


@pytest.fixture
def mixed_archive(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for number, value in enumerate(VALUES * 2):
        status = ("done", "failed", "running")[number % 3]
        write_meta(
            root / f"ns{number % 2}" / f"run{number}",
            make_metadata(
                status=status,
                duration=float(number),
                end_time=1700000000.0 + number,
                parameters={"MODEL": value, "__PREFIX__": value},
            ),
        )
    write_meta(root / "ns0" / "no_model", make_metadata(parameters={}))
    write_meta(root / "ns0" / "no_status", {key: value for key, value in make_metadata().items() if key != "status"})
    return root


@pytest.mark.parametrize(
    "expression",
    [
        "p.get('__PREFIX__', 'unknown')",
        "p['__PREFIX__']",
        "p.get('__DEBUG__')",
        "p.get('MODEL', 'unknown')",
        "p.get('MODEL')",
        "params['MODEL']",
        "m['status']",
        "m.get('error_type', 'none')",
        "meta['namespace']",
    ],
)
@pytest.mark.parametrize("select", [None, "m['duration'] > 3"])
def test_sql_grouping_equals_python_grouping(
    mixed_archive: Path, expression: str, select: str | None, index_backend: str
) -> None:
    group_by = compile_expression(expression, what="--group")
    selection = compile_expression(select) if select else None
    with open_archive_index(str(mixed_archive)) as index:
        sync_archive(index)
        in_sql = scan_groups(index, group_by, selection)
        in_python = scan_groups(index, group_by, selection, sql_grouping=False)

    def figures(result):
        return [
            (group.key, group.count, group.successful, group.last_end_time, group.duration_count, group.disk_usage)
            for group in result.groups
        ]

    assert figures(in_sql) == figures(in_python)
    assert [group.average_runtime for group in in_sql.groups] == pytest.approx(
        [group.average_runtime for group in in_python.groups]
    )
    assert (in_sql.group_failures.count, dict(in_sql.group_failures.reasons)) == (
        in_python.group_failures.count,
        dict(in_python.group_failures.reasons),
    )
    assert in_sql.groups


def test_scan_counts_its_own_archive_alone_in_an_index_that_holds_another(
    mixed_archive: Path, tmp_path: Path, index_backend: str
) -> None:
    # With one archive in the index every row is its own and none is tested for it; with two, the other's stay out.
    other = tmp_path / "other" / "results"
    for number in range(5):
        write_meta(other / f"run{number}", make_metadata(parameters={"MODEL": "other", "__PREFIX__": "other"}))
    location = str(tmp_path / "shared-index.sqlite3") if index_backend == "sqlite" else None
    group_by = compile_expression("p.get('__PREFIX__', 'unknown')", what="--group")

    def scanned() -> dict[str, int]:
        with open_archive_index(str(mixed_archive), location) as index:
            sync_archive(index)
            return {group.key: group.count for group in scan_groups(index, group_by).groups}

    alone = scanned()
    with open_archive_index(str(other), location) as index:
        sync_archive(index)
        assert index.db.fetch_row("SELECT COUNT(*) FROM archives")[0] == 2
    assert scanned() == alone and "other" not in alone


def test_only_single_key_reads_are_grouped_in_sql() -> None:
    from pycomex_index.stats import _single_key_read

    assert _single_key_read(compile_expression("p.get('MODEL', 'unknown')")) is not None
    assert _single_key_read(compile_expression("m['start_time']")) is None  # becomes a float in Python
    assert _single_key_read(compile_expression("m['name']")) is None  # derived when missing
    assert _single_key_read(compile_expression("p.get('MODEL', 'x') + '!'")) is None
    assert _single_key_read(compile_expression("str(p.get('MODEL'))")) is None


# ------------------------------------------------------------------ the table, drawn without rich into a pipe

TEXT = st.one_of(
    st.from_regex(r"[a-z0-9(%/.\[-]([a-zA-Z0-9 ()%/.\[\]'_-]{0,14}[a-z0-9)%.\]])?", fullmatch=True),  # drawn plainly
    st.text(alphabet=st.sampled_from("ab:_ -/.()%[]é漢\U0001f480"), max_size=12),
    st.text(alphabet=st.characters(codec="ascii", min_codepoint=32), max_size=120),
)
FOOTER_LINE = st.builds(lambda icon, text: f"{icon}Summary: {text}", st.sampled_from(["", "\U0001f480 "]), TEXT)


def _drawn_by_rich(heading: list[str], rows: list[list[str]], footer: list[str]) -> list[str]:
    import io

    from rich.console import Console

    from pycomex_index.cli.archive_read import SCAN_PIPE_WIDTH, _render_scan_table

    console = Console(file=io.StringIO(), width=SCAN_PIPE_WIDTH, highlight=False)
    with console.capture() as captured:
        _render_scan_table(console, heading, rows, footer)
    return captured.get().rstrip("\n").split("\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    heading=st.lists(TEXT, min_size=1, max_size=3),
    rows=st.lists(st.lists(TEXT, min_size=6, max_size=6), max_size=5),
    footer=st.lists(FOOTER_LINE, min_size=1, max_size=2),
)
# Found by hypothesis in a full run: text like markup in a figure's cell ("[/0]" closes nothing) made rich raise.
@example(heading=["0"], rows=[["0", "0", "0", "0", "0[/0]0", ""]], footer=["Summary: b"])
def test_the_table_drawn_for_a_pipe_is_what_rich_draws(
    monkeypatch: pytest.MonkeyPatch, heading: list[str], rows: list[list[str]], footer: list[str]
) -> None:
    from pycomex_index.cli.archive_read import _plain_scan_lines

    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(variable, raising=False)
    plain = _plain_scan_lines(heading, rows, footer)
    if plain is not None:
        assert plain == _drawn_by_rich(heading, rows, footer)


ROW = ["(empty)", "7", "3/7 (42.9%)", "6.7 days ago", "0.12s", "531.7 KB"]


@pytest.mark.parametrize(
    ("heading", "cell", "forcing"),
    [
        ("Grouped by: p.get('x', ':smile:')", "ablation", None),  # rich would print an emoji
        ("Grouped by: m['namespace']", "größe", None),  # rich measures what is not ASCII
        ("Grouped by: m['namespace']", "x" * 150, None),  # rich would shrink the table to the width
        ("Filtered by: " + "x" * 200, "ablation", None),  # rich would wrap the line
        ("Grouped by: m['namespace']", "ablation", "FORCE_COLOR"),  # rich would style the header
    ],
)
def test_what_rich_would_draw_otherwise_is_left_to_rich(
    monkeypatch: pytest.MonkeyPatch, heading: str, cell: str, forcing: str | None
) -> None:
    from pycomex_index.cli.archive_read import _plain_scan_lines

    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(variable, raising=False)
    assert _plain_scan_lines(["Grouped by: m['namespace']"], [ROW], ["Summary"]) is not None
    if forcing:
        monkeypatch.setenv(forcing, "1")
    assert _plain_scan_lines([heading], [[cell, *ROW[1:]]], ["Summary"]) is None


def test_scan_into_a_pipe_does_not_import_rich(archive: Path) -> None:
    import os
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from pycomex_index.cli import main\n"
        f"sys.argv = ['pycomex-index', 'archive', 'scan', '--path', {str(archive)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('rich imported' if 'rich' in sys.modules else 'rich not imported', file=sys.stderr)\n"
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    }
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={**environment, "PYCOMEX_INDEX_NO_PROGRESS": "1"},
        cwd=archive.parent,  # not the checkout: `python -c` imports from its working directory first
    )
    assert result.returncode == 0, result.stderr
    assert "Summary: 2 group(s), 8 experiment(s)" in result.stdout
    assert result.stderr.strip().endswith("rich not imported")


@pytest.mark.sqlite_only("SQLite's query plan")
def test_the_default_grouping_walks_the_prefix_index_without_a_sort(mixed_archive: Path) -> None:
    group_by = compile_expression("p.get('__PREFIX__', 'unknown')", what="--group")
    with open_archive_index(str(mixed_archive)) as index:
        sync_archive(index)
        with statements_sent(index.db) as sent:
            groups = {group.key: group.count for group in scan_groups(index, group_by).groups}
        sql, params = next((sql, params) for sql, params in sent if "prefix IS NOT NULL" in sql)
        plan = sqlite_plan(index.db, sql, params)
    assert "COVERING INDEX ix_experiments_prefix" in plan and "TEMP B-TREE" not in plan, plan
    assert groups["resnet"] == 2 and groups["unknown"] == 2  # no_model and no_status have no prefix
