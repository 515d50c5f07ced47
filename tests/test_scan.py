"""scan groups in SQL when the group expression reads one key, and gets exactly what Python grouping gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycomex_index.selection import compile_expression
from pycomex_index.stats import scan_groups
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import make_metadata, write_meta

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


def test_only_single_key_reads_are_grouped_in_sql() -> None:
    from pycomex_index.stats import _single_key_read

    assert _single_key_read(compile_expression("p.get('MODEL', 'unknown')")) is not None
    assert _single_key_read(compile_expression("m['start_time']")) is None  # becomes a float in Python
    assert _single_key_read(compile_expression("m['name']")) is None  # derived when missing
    assert _single_key_read(compile_expression("p.get('MODEL', 'x') + '!'")) is None
    assert _single_key_read(compile_expression("str(p.get('MODEL'))")) is None
