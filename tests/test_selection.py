"""Compiling and analysing selection expressions."""

from __future__ import annotations

import json
import time

import pytest

from pycomex_index.errors import SelectionError
from pycomex_index.selection import (
    READS_DOCUMENT,
    READS_NO_METADATA,
    READS_SUMMARY,
    PosixTime,
    build_metadata,
    compile_expression,
    evaluate,
    evaluation_globals,
)


@pytest.mark.parametrize(
    ("source", "reads_metadata", "reads_parameters"),
    [
        ("True", READS_NO_METADATA, False),
        ("p['LEARNING_RATE'] < 0.01", READS_NO_METADATA, True),
        ("params.get('MODEL') == 'resnet'", READS_NO_METADATA, True),
        ("m['status'] == 'done' and p['X'] > 1", READS_SUMMARY, True),
        ("m['status'] == 'done'", READS_SUMMARY, False),
        ("metadata.get('duration', 0) > 60", READS_SUMMARY, False),
        ("m['name'].startswith('debug')", READS_SUMMARY, False),
        ("m['description'] != ''", READS_DOCUMENT, False),
        ("'version' not in m", READS_SUMMARY, False),
        ("'description' in m", READS_DOCUMENT, False),
        ("len(meta) > 3", READS_DOCUMENT, False),
        ("len(meta) > 3 and p['X'] > 1", READS_DOCUMENT, True),
        ("any(m[key] for key in ['status'])", READS_DOCUMENT, False),
        ("eval('1') == 1", READS_DOCUMENT, True),  # it could as well have been eval("m['status']")
        ("globals()['p']['X'] > 1", READS_DOCUMENT, True),
    ],
)
def test_expressions_read_only_what_they_need(source: str, reads_metadata: int, reads_parameters: bool) -> None:
    expression = compile_expression(source)
    assert (expression.reads_metadata, expression.reads_parameters) == (reads_metadata, reads_parameters)


@pytest.mark.parametrize(
    ("source", "keys"),
    [
        ("p['X'] > 1", frozenset()),
        ("m['status'] == 'done' and p['X'] > 1", {"status"}),
        ("m.get('state') == 'live' or meta['name'] == 'a'", {"state", "name"}),
        ("'state' in m", {"state"}),
        ("m['description'] != ''", {"description"}),
        ("len(m) > 3", None),
        ("[k for k in m]", None),
        ("m['status'] == 'done' and str(m) != ''", None),
        ("eval(\"m['state']\") == 'live'", None),
        ("globals()['m']['state'] == 'live'", None),
    ],
)
def test_the_keys_m_is_read_with_are_known_unless_it_may_be_read_whole(source: str, keys) -> None:
    expression = compile_expression(source)
    assert expression.metadata_keys == (frozenset(keys) if keys is not None else None)
    assert expression.may_read_metadata_key("state") == (keys is None or "state" in keys)


KILLED_RUN_LINE = "💀 results/neural_net/26_11_2026__14_03_50__p11237__wKXG (interrupted)\n"


@pytest.mark.parametrize(
    "select",
    [
        "m.get('state') == 'interrupted'",
        "'state' in m and m['state'] == 'interrupted'",
        "'interrupted' in m.values()",
        "eval(\"m['state']\") == 'interrupted'",
        "globals()['meta']['state'] == 'interrupted'",
        "m['status'] in ('running',)",  # reads no state; the line still shows the run judged
    ],
)
def test_every_way_an_expression_can_see_the_state_finds_it(archive, run_cli, select: str) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--select", select)
    assert result.exit_code == 0, result.output
    assert result.stdout == KILLED_RUN_LINE


@pytest.mark.parametrize(
    "select",
    [
        "m['path'].endswith('/neural_net/26_11_2026__14_03_50__p11237__wKXG') and m['status'] in ('running',)",
        "m['start_time'] > '2000-01-01' and m['status'] in ('running',)",  # a time compares with a date
        "m['status'] in ('running',) and m['name'] == 'train_neural_net'",  # the file's own name wins
    ],
)
def test_the_keys_m_gains_or_changes_are_there_when_read(archive, run_cli, select: str) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--select", select)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert result.stdout == KILLED_RUN_LINE


def test_a_syntax_error_is_a_selection_error() -> None:
    with pytest.raises(SelectionError):
        compile_expression("p['X' > 1")


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
    assert (code.reads_metadata, code.reads_parameters) == (READS_NO_METADATA, True)


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
        _ = start > "last tuesday"


def test_derived_keys_are_added_only_when_missing() -> None:
    metadata = build_metadata({"start_time": 5.0}, path="/a/b", namespace="ns")
    assert metadata["path"] == "/a/b" and metadata["name"] == "ns"
    assert isinstance(metadata["start_time"], PosixTime)
    kept = build_metadata({"name": "real", "path": "custom"}, path="/a/b", namespace="ns")
    assert (kept["name"], kept["path"]) == ("real", "custom")


@pytest.mark.parametrize(
    "leak",
    [
        "(seen := 1)",  # a walrus binds in the globals
        "globals().update(seen=1)",
        "globals().pop('m')",  # and a name goes missing
        "globals().update(m=None, p=None, __builtins__=None)",
    ],
)
def test_a_reused_namespace_is_fresh_again_for_the_next_experiment(leak: str) -> None:
    from pycomex_index.selection import rebind_evaluation_globals

    namespace = evaluation_globals({"row": 1}, {"A": 1})
    evaluate(compile_expression(leak), namespace)
    following = rebind_evaluation_globals(namespace, {"row": 2}, {"A": 2})
    assert following == evaluation_globals({"row": 2}, {"A": 2})


@pytest.mark.parametrize("command", ["list", "scan"])
def test_no_experiment_sees_a_name_another_experiments_expression_bound(archive, run_cli, command: str) -> None:
    # Evaluated on its own, each experiment finds `seen` unbound: all are selected, all fall in one group.
    expression = "'seen' not in globals() and (seen := True)"
    if command == "list":
        selected = run_cli("archive", "list", "--select", expression, "--json", "--path", str(archive))
        everything = run_cli("archive", "list", "--json", "--path", str(archive))
        readable = [row for row in json.loads(everything.output) if row["metadata_error"] is None]
        assert len(json.loads(selected.output)) == len(readable)
    else:
        result = run_cli("archive", "scan", "--group", expression, "--json", "--path", str(archive))
        assert [group["group"] for group in json.loads(result.output)] == ["True"]
