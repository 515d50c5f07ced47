"""SQL pushdown never changes a result: property test against pure Python evaluation of the files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycomex_index import queries
from pycomex_index.discovery import parameter_values
from pycomex_index.pushdown import prefilter_for
from pycomex_index.queries import iter_experiments, iter_selected
from pycomex_index.selection import (
    EvaluationFailures,
    build_metadata,
    compile_expression,
    evaluate,
    evaluation_globals,
)
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive

# Values chosen to hit every type edge the translation must respect: missing keys, null, bools,
# ints, floats, huge ints, numeric and date strings; NaN and Infinity (which Python's json writes and
# SQLite's JSON functions reject), integers beyond 64 bits (which orjson and SQLite would round) and
# times too large to be times. Each is written by json.dumps, as pycomex writes them.
NON_FINITE = [float("inf"), float("-inf"), float("nan")]
BEYOND_64_BITS = [2**64 + 1, -(2**64) - 1, 10**400]
ODD_VALUES = st.sampled_from(
    [None, True, False, 0, 1, 32, 0.001, 0.01, 0.0099999, 2.0**60, -5, 1e300, "done", "0.01", "2024-01-10"]
    + NON_FINITE
    + BEYOND_64_BITS
)
STATUS = st.one_of(st.sampled_from(["done", "failed", "running", "Done"]), ODD_VALUES)
TIME = st.one_of(st.floats(1.6e9, 1.8e9), st.integers(1_600_000_000, 1_800_000_000), ODD_VALUES)
NUMBER = st.one_of(st.floats(-1, 1), st.integers(-100, 100), st.floats(), st.integers(-(2**70), 2**70), ODD_VALUES)
MISSING = object()


def _maybe_missing(strategy):
    return st.one_of(st.just(MISSING), strategy)


EXPERIMENT = st.fixed_dictionaries(
    {
        "status": _maybe_missing(STATUS),
        "error_type": _maybe_missing(st.one_of(st.sampled_from(["ValueError", "KeyError"]), ODD_VALUES)),
        "duration": _maybe_missing(NUMBER),
        "start_time": _maybe_missing(TIME),
        "LEARNING_RATE": _maybe_missing(NUMBER),
        "MODEL": _maybe_missing(st.one_of(st.sampled_from(["resnet", "mlp"]), ODD_VALUES)),
    }
)

SUBJECTS = ["m['status']", "m['error_type']", "m['duration']", "m['start_time']", "p['LEARNING_RATE']", "p['MODEL']"]
CONSTANTS = [
    "'done'",
    "'ValueError'",
    "'resnet'",
    "0",
    "1",
    "32",
    "0.01",
    "0.001",
    "-5",
    "1.7e9",
    "'2024-01-10'",
    "'2025-06-01T12:00'",
    "True",
    "None",
    "1e400",
    "18446744073709551617",
    "1e300",
]
OPERATORS = ["==", "<", "<=", ">", ">=", "!="]


@st.composite
def expressions(draw, depth: int = 0) -> str:
    if depth < 2 and draw(st.booleans()):
        joiner = draw(st.sampled_from([" and ", " or "]))
        parts = draw(st.lists(expressions(depth=depth + 1), min_size=2, max_size=3))
        text = joiner.join(f"({part})" for part in parts)
        return f"not ({text})" if draw(st.integers(0, 5)) == 0 else text
    subject, operator, constant = (
        draw(st.sampled_from(SUBJECTS)),
        draw(st.sampled_from(OPERATORS)),
        draw(st.sampled_from(CONSTANTS)),
    )
    return f"{constant} {operator} {subject}" if draw(st.booleans()) else f"{subject} {operator} {constant}"


_counter = itertools.count()


def _write_archive(root: Path, experiments: list[dict]) -> None:
    for number, fields in enumerate(experiments):
        metadata = {
            key: value
            for key, value in fields.items()
            if key not in ("LEARNING_RATE", "MODEL") and value is not MISSING
        }
        metadata["parameters"] = {
            name: {"name": name, "value": fields[name]}
            for name in ("LEARNING_RATE", "MODEL")
            if fields[name] is not MISSING
        }
        folder = root / "ns" / f"run{number}"
        folder.mkdir(parents=True)
        (folder / "experiment_meta.json").write_text(json.dumps(metadata))


def _pure_python(root: Path, source: str) -> tuple[set[str], int]:
    """The experiments the expression selects, and on how many it raised, reading every file."""
    expression = compile_expression(source)
    selected = set()
    raised = 0
    for folder in (root / "ns").iterdir():
        metadata = build_metadata(
            json.loads((folder / "experiment_meta.json").read_text()), path=str(folder), namespace="ns"
        )
        try:
            if eval(expression.code, evaluation_globals(metadata, parameter_values(metadata))):
                selected.add(f"ns/{folder.name}")
        except Exception:
            raised += 1
    return selected, raised


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(experiments=st.lists(EXPERIMENT, min_size=1, max_size=12), source=expressions())
def test_pushdown_selects_exactly_what_python_selects(tmp_path: Path, experiments: list[dict], source: str) -> None:
    root = tmp_path / f"archive{next(_counter)}"
    _write_archive(root, experiments)
    with open_archive_index(str(root), str(tmp_path / "shared-index.sqlite3")) as index:
        sync_archive(index)
        selection = compile_expression(source)
        stats = EvaluationFailures()
        selected = {row.rel_path for row in iter_experiments(index, selection, failures=stats)}
    assert (selected, stats.count) == _pure_python(root, source), (source, stats.sql_condition)


EDGE_VALUES = [
    MISSING,
    None,
    True,
    False,
    0,
    1,
    32,
    0.001,
    0.01,
    0.0099999,
    2.0**60,
    2**60 + 1,
    -5,
    1.7e9,
    1_700_000_000,
    "done",
    "Done",
    "ValueError",
    "resnet",
    "0.01",
    "2024-01-10",
    "2025-06-01T12:00",
    [1],
    {"a": 1},
    *NON_FINITE,
    *BEYOND_64_BITS,
    1e300,
    [float("nan")],
    {"a": 2**64 + 1},
]


def _edge_archive(root: Path) -> None:
    """Every edge value in every field, each in an experiment of its own, plus a few all-round ones."""
    baseline = {
        "status": "done",
        "error_type": None,
        "duration": 5.0,
        "start_time": 1.7e9,
        "LEARNING_RATE": 0.001,
        "MODEL": "resnet",
    }
    experiments = [dict(baseline, **{field: value}) for field in baseline for value in EDGE_VALUES]
    experiments += [
        dict(zip(baseline, values, strict=True))
        for values in zip(*(EDGE_VALUES[i:] + EDGE_VALUES[:i] for i in range(6)), strict=True)
    ]
    _write_archive(root, experiments)


def _synced_edge_archive(tmp_path_factory) -> Path:
    """The edge archive, built and indexed once per test session."""
    root = _EDGE_ARCHIVE.get("root")
    if root is None:
        root = tmp_path_factory.mktemp("edges") / "results"
        _edge_archive(root)
        _EDGE_ARCHIVE["root"] = root
        with open_archive_index(str(root)) as index:
            sync_archive(index)
    return root


_EDGE_ARCHIVE: dict[str, Path] = {}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=expressions())
def test_pushdown_is_exact_on_every_edge_value(tmp_path_factory, source: str) -> None:
    root = _synced_edge_archive(tmp_path_factory)
    with open_archive_index(str(root)) as index:
        stats = EvaluationFailures()
        selected = {row.rel_path for row in iter_experiments(index, compile_expression(source), failures=stats)}
    assert (selected, stats.count) == _pure_python(root, source), source


@pytest.mark.parametrize(
    "source",
    [
        "m['status'] == 'done' and p['LEARNING_RATE'] < 0.01",
        "p['MODEL'] == 'resnet' or m['duration'] > 3",
        "m['start_time'] > '2023-01-10' and (p['LEARNING_RATE'] >= 0.001 or m['error_type'] == 'ValueError')",
    ],
)
def test_rows_sql_finds_true_for_certain_are_not_evaluated_again(tmp_path_factory, source: str) -> None:
    root = _synced_edge_archive(tmp_path_factory)
    with open_archive_index(str(root)) as index:
        stats = EvaluationFailures()
        rows = list(iter_experiments(index, compile_expression(source), with_parameters=True, failures=stats))
        readable = sum(1 for row in iter_experiments(index, include_unreadable=False))
    assert ({row.rel_path for row in rows}, stats.count) == _pure_python(root, source)
    assert stats.selected_in_sql > 0 and stats.evaluated + stats.selected_in_sql < readable
    # What the caller asked for is still there on the rows SQL decided.
    for row in rows:
        folder_metadata = json.loads((root / row.rel_path / "experiment_meta.json").read_text())
        assert row.parameters == parameter_values(folder_metadata)


def test_rows_sql_decides_still_get_the_group_namespace(tmp_path_factory) -> None:
    root = _synced_edge_archive(tmp_path_factory)
    selection = compile_expression("m['status'] == 'done'")
    group_by = compile_expression("m['status'] + str(p.get('MODEL'))")
    with open_archive_index(str(root)) as index:
        stats = EvaluationFailures()
        rows = iter_selected(index, ("e.rel_path",), selection, also_evaluates=group_by, failures=stats)
        groups = {rel_path: evaluate(group_by, namespace) for (rel_path,), _, namespace in rows}
    assert stats.selected_in_sql > 0 and groups
    for rel_path, group in groups.items():
        folder_metadata = json.loads((root / rel_path / "experiment_meta.json").read_text())
        assert group == "done" + str(parameter_values(folder_metadata).get("MODEL"))


def test_the_benchmark_select_is_pushed_down_entirely() -> None:
    prefilter = prefilter_for(compile_expression("m['status'] == 'done' and p['LEARNING_RATE'] < 0.01"))
    assert prefilter is not None
    assert prefilter.pushed == ["m['status'] == 'done'", "p['LEARNING_RATE'] < 0.01"]


def test_untranslatable_parts_are_left_to_python() -> None:
    assert prefilter_for(compile_expression("m['name'].startswith('debug')")) is None
    assert prefilter_for(compile_expression("m['status'] != 'done'")) is None
    assert prefilter_for(compile_expression("'x' in p or m['status'] == 'done'")) is None
    mixed = prefilter_for(compile_expression("m['status'] == 'done' and 'x' in p"))
    assert mixed is not None and mixed.pushed == ["m['status'] == 'done'"]


def test_explain_says_what_ran_where(archive: Path, run_cli) -> None:
    result = run_cli(
        "archive", "list", "--path", str(archive), "--select", "m['status'] == 'done' and len(p) > 3", "--explain"
    )
    assert result.exit_code == 0, result.output
    assert "in SQL" in result.stderr and "m['status'] == 'done'" in result.stderr
    assert "in Python: the whole expression, on the 3 experiments left" in result.stderr


def test_explain_counts_the_experiments_sql_selected_alone(archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--select", "m['status'] == 'done'", "--explain")
    assert result.exit_code == 0, result.output
    assert "in Python: the whole expression, on the 0 experiments left; SQL alone selected 3 more" in result.stderr


@pytest.mark.parametrize(
    "source",
    [
        "m['status'] == 'done' and p['LEARNING_RATE'] < 0.01",
        "m['status'] == 'failed' and p['LEARNING_RATE'] <= 0.005 and m['duration'] > 0",
        "m['status'] == 'done' and p['DATASET'] == 'synthetic_regression'",  # missing from some runs: KeyError
        "m['status'] == 'done' and p['PATIENCE'] == 0",  # null in some runs, missing from others
        "m['status'] == 'failed' and p['FAIL_WITH'] == 'KeyError' or m['status'] == 'running'",
        "m['error_type'] == 'ValueError' and p['MODEL'] == 'größe'",
        "m['status'] == 'done' or p['LEARNING_RATE'] < 0.01",
        # SQL decides the status; Python reads p, or m's summary and derived keys, of the rows it leaves.
        "m['status'] == 'done' and len(p) > 3",
        "m['status'] == 'failed' and 'sweep' in m['path'] + m['name']",
    ],
)
def test_each_backend_selects_in_sql_what_python_alone_selects(archive: Path, run_cli, source: str) -> None:
    # bool(...) is opaque to the pushdown: the same expression, decided by Python on every experiment.
    def listing(select: str) -> tuple[str, str]:
        result = run_cli("archive", "list", "--path", str(archive), "--select", select)
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr

    assert prefilter_for(compile_expression(source)) is not None
    assert listing(source) == listing(f"bool({source})")


@pytest.mark.parametrize("batch_rows", [1, 2, 3])
def test_rows_left_to_python_are_read_in_batches_of_any_size(
    archive: Path, run_cli, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    # Batches far smaller than the archive: undecided rows in several batches, and in none of some.
    monkeypatch.setattr(queries, "_BATCH_ROWS", batch_rows)
    source = "m['status'] == 'failed' and 'sweep' in m['path'] + m['name'] or m['status'] == 'done' and len(p) > 3"
    assert prefilter_for(compile_expression(source)) is not None

    def shown(*command: str, select: str) -> str:
        result = run_cli("archive", *command, "--path", str(archive), "--select", select)
        assert result.exit_code == 0, result.output
        return result.stdout + result.stderr

    for command in (("list",), ("tail", "-n", "1"), ("tail", "-n", "2"), ("tail", "-n", "9")):
        assert shown(*command, select=source) == shown(*command, select=f"bool({source})"), command


def test_typed_parameters_follow_a_rewritten_file(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _write_archive(root, [{"status": "done", "LEARNING_RATE": 0.001, "MODEL": "mlp"}])
    meta = root / "ns" / "run0" / "experiment_meta.json"
    selection = compile_expression("p['LEARNING_RATE'] < 0.01 and p['MODEL'] == 'mlp'")
    with open_archive_index(str(root)) as index:
        sync_archive(index)
        assert [row.rel_path for row in iter_experiments(index, selection)] == ["ns/run0"]
        for learning_rate, model in ((0.5, "mlp"), (float("nan"), "mlp"), (0.001, "resnet"), (0.001, "mlp")):
            document = json.loads(meta.read_text())
            document["parameters"] = {"LEARNING_RATE": {"value": learning_rate}, "MODEL": {"value": model}}
            meta.write_text(json.dumps(document) + " " * next(_counter))  # another size: the sync sees a change
            sync_archive(index)
            stats = EvaluationFailures()
            selected = [row.rel_path for row in iter_experiments(index, selection, failures=stats)]
            assert (set(selected), stats.count) == _pure_python(root, selection.source)
        rows = index.db.fetch_one("SELECT COUNT(*) FROM experiment_parameters")[0]
        assert rows == 2  # the old values were replaced, not added to
