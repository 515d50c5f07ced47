"""Compiling and analysing selection expressions."""

from __future__ import annotations

import time

import pytest

from pycomex_index.errors import SelectionError
from pycomex_index.selection import (
    NEEDS_DOCUMENT,
    NEEDS_NOTHING,
    NEEDS_PARAMETERS,
    NEEDS_SUMMARY,
    PosixTime,
    build_metadata,
    compile_expression,
    evaluate,
    evaluation_globals,
)


@pytest.mark.parametrize(
    ("source", "needs"),
    [
        ("True", NEEDS_NOTHING),
        ("p['LEARNING_RATE'] < 0.01", NEEDS_PARAMETERS),
        ("params.get('MODEL') == 'resnet'", NEEDS_PARAMETERS),
        ("m['status'] == 'done' and p['X'] > 1", NEEDS_SUMMARY),
        ("metadata.get('duration', 0) > 60", NEEDS_SUMMARY),
        ("m['name'].startswith('debug')", NEEDS_SUMMARY),
        ("m['description'] != ''", NEEDS_DOCUMENT),
        ("'version' not in m", NEEDS_SUMMARY),
        ("'description' in m", NEEDS_DOCUMENT),
        ("len(meta) > 3", NEEDS_DOCUMENT),
        ("any(m[key] for key in ['status'])", NEEDS_DOCUMENT),
        ("p['X' > 1", None),
    ],
)
def test_expressions_read_only_what_they_need(source: str, needs: int | None) -> None:
    if needs is None:
        with pytest.raises(SelectionError):
            compile_expression(source)
        return
    assert compile_expression(source).needs == needs


@pytest.mark.parametrize(
    "source",
    ["any(v > 1 for v in p.values())", "[k for k in m if k.startswith('a')]", "(lambda x: x)(1)", "(n := 3) > 2"],
)
def test_locally_bound_names_are_not_unknown(source: str) -> None:
    compile_expression(source)


def test_unknown_names_are_listed() -> None:
    with pytest.raises(SelectionError, match="unknown name 'q', 'z'"):
        compile_expression("q['x'] + z")


def test_modify_code_may_assign_and_use_several_lines() -> None:
    code = compile_expression("if 'old' in p:\n    p['new'] = p.pop('old')\nx = 1; p['y'] = x", mode="exec")
    assert code.needs == NEEDS_PARAMETERS


def test_comprehensions_see_m_and_p() -> None:
    expression = compile_expression("all(p[name] > 0 for name in p)")
    assert evaluate(expression, evaluation_globals({}, {"a": 1, "b": 2})) is True


def test_times_compare_with_iso_date_strings_as_local_time() -> None:
    start = PosixTime(time.mktime((2024, 1, 15, 10, 30, 0, 0, 0, -1)))
    assert start > "2024-01-10"
    assert start < "2024-01-15T10:31"
    assert "2024-01-20" > start
    assert not start > "2024-01-16"
    assert start + 1 > start
    with pytest.raises(TypeError):
        start > "last tuesday"


def test_derived_keys_are_added_only_when_missing() -> None:
    metadata = build_metadata({"start_time": 5.0}, path="/a/b", namespace="ns")
    assert metadata["path"] == "/a/b" and metadata["name"] == "ns"
    assert isinstance(metadata["start_time"], PosixTime)
    kept = build_metadata({"name": "real", "path": "custom"}, path="/a/b", namespace="ns")
    assert (kept["name"], kept["path"]) == ("real", "custom")
