"""PostgreSQL gets SQLite's speed-ups with the same results: pushdown, the summary, scan's SQL grouping, lean start.

The speed-ups (typed parameter values and the summary kept by the triggers of
migration 0012, scan grouping on the JSON text, psycopg without SQLAlchemy)
must never change a result: each is compared with pure Python, with the
full count it replaces, or with the SQLite index of the same archive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from pycomex_index.discovery import EXACT_FLOAT_INTEGER
from pycomex_index.postgresql import PostgresDatabase, driver_sql
from pycomex_index.queries import iter_experiments
from pycomex_index.selection import EvaluationFailures, compile_expression
from pycomex_index.stats import archive_statistics, scan_groups
from pycomex_index.store import migrations_folder, open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import make_metadata, write_meta
from tests.test_pushdown import _edge_archive, _pure_python, expressions

TYPED_PARAMETERS_SQL = (
    "SELECT e.rel_path, n.name, p.number, p.text FROM experiment_parameters p "
    "JOIN experiments e ON e.id = p.experiment_id JOIN parameter_names n ON n.id = p.name_id "
    "WHERE e.archive_id = :archive_id"
)


@pytest.fixture(scope="module")
def edge_archive_on_postgresql(tmp_path_factory, postgresql_cluster) -> tuple[Path, str]:
    """test_pushdown's edge archive (every odd value in every field), indexed once in a PostgreSQL database."""
    root = tmp_path_factory.mktemp("edges") / "results"
    _edge_archive(root)
    url = postgresql_cluster.new_database()
    with open_archive_index(str(root), url) as index:
        sync_archive(index)
    return root, url


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=expressions())
def test_pushdown_on_postgresql_selects_exactly_what_python_selects(
    edge_archive_on_postgresql: tuple[Path, str], source: str
) -> None:
    root, url = edge_archive_on_postgresql
    with open_archive_index(str(root), url) as index:
        stats = EvaluationFailures()
        selected = {row.rel_path for row in iter_experiments(index, compile_expression(source), failures=stats)}
    assert (selected, stats.count) == _pure_python(root, source), (source, stats.sql_condition)


@pytest.mark.parametrize("source", ["p['LEARNING_RATE'] < 0.01", "p['MODEL'] == 'resnet'", "p['LEARNING_RATE'] >= 1"])
def test_postgresql_decides_parameter_comparisons_in_sql(edge_archive_on_postgresql: tuple[Path, str], source) -> None:
    root, url = edge_archive_on_postgresql
    with open_archive_index(str(root), url) as index:
        stats = EvaluationFailures()
        selected = {row.rel_path for row in iter_experiments(index, compile_expression(source), failures=stats)}
        readable = index.db.fetch_row(
            "SELECT COUNT(*) FROM experiments WHERE archive_id = :archive_id AND outcome <> 'error'",
            {"archive_id": index.archive_id},
        )[0]
    assert stats.pushed_down == [source]
    # SQL alone selected some rows and dropped others: Python saw only the undecided ones.
    assert stats.selected_in_sql > 0 and stats.evaluated < readable - stats.selected_in_sql
    assert (selected, stats.count) == _pure_python(root, source)


def test_typed_parameters_on_postgresql_are_sqlites(
    edge_archive_on_postgresql: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = edge_archive_on_postgresql
    with open_archive_index(str(root), str(tmp_path / "index.sqlite3")) as index:
        sync_archive(index)
        in_sqlite = {tuple(row) for row in index.db.execute(TYPED_PARAMETERS_SQL, {"archive_id": index.archive_id})}
    with open_archive_index(str(root), url) as index:
        in_postgresql = {tuple(row) for row in index.db.execute(TYPED_PARAMETERS_SQL, {"archive_id": index.archive_id})}
    # PostgreSQL keeps no number from 2**53 on (jsonb does not tell 1e20 from an integer): Python decides those.
    expected = {
        (rel_path, name, None if number is not None and abs(number) >= EXACT_FLOAT_INTEGER else number, text)
        for rel_path, name, number, text in in_sqlite
    }
    assert in_postgresql == expected and len(expected) > 100


def _typed_parameters(index) -> dict[tuple[str, str], tuple]:
    rows = index.db.execute(TYPED_PARAMETERS_SQL, {"archive_id": index.archive_id})
    return {(rel_path, name): (number, text) for rel_path, name, number, text in rows}


def test_typed_parameters_follow_every_write_on_postgresql(tmp_path: Path, postgresql_url: str) -> None:
    root = tmp_path / "results"
    for name in ("a", "b", "c"):
        write_meta(root / "ns" / name, make_metadata(parameters={"LR": 0.1, "MODEL": "mlp"}))
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        assert _typed_parameters(index)[("ns/a", "LR")] == (0.1, None)
        write_meta(root / "ns" / "a", make_metadata(parameters={"LR": True, "NEW": "x"}))
        (root / "ns" / "b" / "experiment_meta.json").write_text("{not json")
        (root / "ns" / "c" / "experiment_meta.json").unlink()
        (root / "ns" / "c").rmdir()
        sync_archive(index)
        assert _typed_parameters(index) == {("ns/a", "LR"): (1.0, None), ("ns/a", "NEW"): (None, "x")}


def _full_count(index) -> dict:
    return asdict(archive_statistics(index, use_summary=False))


def test_summary_on_postgresql_equals_a_full_count_through_changes(tmp_path: Path, postgresql_url: str) -> None:
    root = tmp_path / "results"
    for number in range(12):
        status = ("done", "failed", "running")[number % 3]
        write_meta(
            root / f"ns{number % 2}" / f"run{number}",
            make_metadata(status=status, duration=float(number), error_type="ValueError" if number % 3 == 1 else None),
        )
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        summary_rows = index.db.fetch_row("SELECT COUNT(*) FROM experiment_summary")[0]
        assert summary_rows > 0 and asdict(archive_statistics(index)) == _full_count(index)
        write_meta(root / "ns0" / "run0", make_metadata(status="failed", error_type="KeyError", duration=99.0))
        (root / "ns1" / "run1" / "experiment_meta.json").write_text("{broken")
        (root / "ns0" / "run2" / "experiment_meta.json").unlink()
        (root / "ns0" / "run2").rmdir()
        write_meta(root / "ns2" / "new", make_metadata(status="done", duration=3.5))
        sync_archive(index)
        figures = asdict(archive_statistics(index))
        assert figures == _full_count(index)
        assert figures["total"] == 12 and figures["unreadable"] == 1
        assert ("KeyError", 1) in figures["error_types"]


# Values whose JSON spelling matters to str(): jsonb would spell 1e+20 as 100000000000000000000.
SCAN_VALUES = ["resnet", 1, 1.0, 0.1 + 0.2, 1e20, 10**20, True, None, [128, 64], {"a": 1}, "None", 2**70]


@pytest.mark.parametrize(
    "expression",
    ["p.get('MODEL', 'unknown')", "p['MODEL']", "p.get('__PREFIX__', 'none')", "m['status']", "meta['namespace']"],
)
def test_scan_groups_in_sql_on_postgresql_as_python_does(tmp_path: Path, postgresql_url: str, expression) -> None:
    root = tmp_path / "results"
    for number, value in enumerate(SCAN_VALUES * 2):
        parameters = {"MODEL": value, "__PREFIX__": value} if number % 5 else {}
        status = ("done", "failed", "running")[number % 3]
        write_meta(
            root / f"ns{number % 2}" / f"run{number}",
            make_metadata(status=status, namespace=f"kind{number % 3}", parameters=parameters),
        )
    group_by = compile_expression(expression, what="--group")
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        in_sql = scan_groups(index, group_by)
        in_python = scan_groups(index, group_by, sql_grouping=False)

    def figures(result):
        return [(group.key, group.count, group.successful, group.last_end_time) for group in result.groups]

    assert figures(in_sql) == figures(in_python) and len(in_sql.groups) > 1
    assert in_sql.group_failures.count == in_python.group_failures.count


READ_COMMANDS = [
    ["list"],
    ["tail"],
    ["tail", "-n", "3"],
    ["overview"],
    ["info"],
    ["scan"],
    ["scan", "--group", "p.get('__PREFIX__', 'none')"],
    ["list", "--select", "m['status'] == 'done' and p['LEARNING_RATE'] < 0.01"],
    ["list", "--select", "p.get('NUM_EPOCHS', 0) >= 10"],
    ["overview", "--select", "m['status'] != 'running'"],
]


def test_read_commands_print_the_same_on_both_backends(archive: Path, postgresql_url: str, run_cli, monkeypatch):
    outputs = {}
    for backend, index in (("sqlite", str(archive.parent / "index.sqlite3")), ("postgresql", postgresql_url)):
        monkeypatch.setenv("PYCOMEX_INDEX", index)
        outputs[backend] = [run_cli("archive", "--path", str(archive), *command).output for command in READ_COMMANDS]
    for command, on_sqlite, on_postgresql in zip(READ_COMMANDS, outputs["sqlite"], outputs["postgresql"], strict=True):
        assert on_postgresql == on_sqlite, command


def test_a_postgresql_read_command_imports_no_sqlalchemy_nor_psycopg_3(archive: Path, postgresql_url: str) -> None:
    """SQLAlchemy costs 0.4-0.65 s to import here, psycopg 3 0.16-0.4 s: a read on an index at head needs neither."""
    with open_archive_index(str(archive), postgresql_url) as index:
        sync_archive(index)  # built (and migrated) first, so the command below finds the schema at head
    program = """
import json, sys
from pycomex_index.cli import main
sys.argv = ["pycomex-index", "archive", "--path", sys.argv[1], "tail", "-n", "1"]
try:
    main()
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("sqlalchemy", "alembic", "psycopg"))))
"""
    result = subprocess.run(
        [sys.executable, "-c", program, str(archive)],
        env={**os.environ, "PYCOMEX_INDEX": postgresql_url},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert result.stdout.startswith("Experiment: ")  # it did read the index (an empty tail would prove nothing)


def test_a_transaction_that_need_not_be_durable_does_not_wait_for_the_disk(postgresql_url: str) -> None:
    """sync's closing bookkeeping: synchronous_commit off for that transaction only."""
    database = PostgresDatabase(postgresql_url)
    try:
        database.execute("SET synchronous_commit = on")  # a lab's server; the tests' cluster runs with it off
        settings = [
            database.run_in_transaction(lambda: database.fetch_row("SHOW synchronous_commit")[0], durable=durable)
            for durable in (False, True)
        ]
        assert settings == ["off", "on"]
        assert database.fetch_row("SHOW synchronous_commit")[0] == "on"
    finally:
        database.close()


def test_an_existing_postgresql_index_is_migrated_to_the_summary_and_typed_values(
    tmp_path: Path, postgresql_url: str
) -> None:
    from alembic import command
    from alembic.config import Config

    root = tmp_path / "results"
    for number in range(6):
        parameters = {"LR": number / 10, "MODEL": f"m{number % 2}"}
        write_meta(root / "ns" / f"run{number}", make_metadata(status="done", parameters=parameters))
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        typed = _typed_parameters(index)
    # Back to 0011, as an index made before this revision is: no triggers, an empty summary and no typed values.
    database = PostgresDatabase(postgresql_url)
    config = Config()
    config.set_main_option("script_location", migrations_folder())
    with database.sqlalchemy_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0011")
    assert database.fetch_row("SELECT COUNT(*) FROM experiment_summary")[0] == 0
    assert database.fetch_row("SELECT COUNT(*) FROM experiment_parameters")[0] == 0
    database.close()
    with open_archive_index(str(root), postgresql_url) as index:  # opening upgrades to head
        assert _typed_parameters(index) == typed and len(typed) == 12
        assert asdict(archive_statistics(index)) == _full_count(index)
        assert archive_statistics(index).total == 6


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT :a", "SELECT %(a)s"),
        ("SELECT CAST(:a AS text)::json -> :key", "SELECT CAST(%(a)s AS text)::json -> %(key)s"),
        ("SELECT 'x' LIKE 'a%' AND b = :b_2", "SELECT 'x' LIKE 'a%%' AND b = %(b_2)s"),
    ],
)
def test_named_parameters_become_psycopgs(sql: str, expected: str) -> None:
    assert driver_sql(sql) == expected


def test_a_sync_on_postgresql_trusts_folder_digests_and_still_finds_a_change(tmp_path: Path, postgresql_url) -> None:
    """As on SQLite: an unchanged folder costs no read of its stored rows; a changed one is compared and mended."""
    from pycomex_index.sync import refresh_index

    root = tmp_path / "results"
    for number in range(6):
        write_meta(root / f"ns{number % 3}" / f"run{number}", make_metadata(duration=float(number)))
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        stamp_reads: list[dict] = []
        execute = index.db.execute

        def recording_execute(sql: str, params: dict | None = None):
            if "meta_mtime_ns" in sql and sql.lstrip().startswith("SELECT"):
                stamp_reads.append(dict(params or {}))
            return execute(sql, params)

        index.db.execute = recording_execute  # type: ignore[method-assign]
        report = refresh_index(index)
        assert report is not None and report.changed == 0 and stamp_reads == []
        write_meta(root / "ns1" / "run1", make_metadata(duration=1234.5, description="changed, longer"))
        report = refresh_index(index)
        assert report is not None and report.updated == 1
        assert [params.get("prefix") for params in stamp_reads] == ["ns1/"]
        durations = index_durations(index)
    assert durations["ns1/run1"] == 1234.5


def index_durations(index) -> dict[str, float]:
    rows = index.db.execute("SELECT rel_path, duration FROM experiments WHERE archive_id = :a", {"a": index.archive_id})
    return dict(rows)


def test_the_urls_own_start_up_options_still_apply(postgresql_url: str, monkeypatch) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX_BUSY_TIMEOUT", "7")
    database = PostgresDatabase(postgresql_url + "&options=-c%20work_mem%3D7MB")
    try:
        assert database.fetch_row("SHOW work_mem")[0] == "7MB"
        assert database.fetch_row("SHOW lock_timeout")[0] == "7s"
    finally:
        database.close()


@pytest.mark.parametrize(
    "order", ["start_time NULLS FIRST, rel_path", "start_time DESC NULLS LAST, rel_path DESC"], ids=["list", "tail"]
)
def test_list_and_tail_order_is_read_from_an_index_on_postgresql(tmp_path: Path, postgresql_url: str, order) -> None:
    """SQLite's order (NULL start times first) straight from ix_experiments_listing: no sort of every row."""
    root = tmp_path / "results"
    for number in range(6):
        write_meta(root / "ns" / f"run{number}", make_metadata(start_time=None if number == 0 else 1000.0 + number))
    with open_archive_index(str(root), postgresql_url) as index:
        sync_archive(index)
        db = index.db
        db.execute("ANALYZE experiments")
        with db.transaction():
            db.execute("SET LOCAL enable_seqscan = off")  # six rows: otherwise a scan and a sort are cheapest
            plan = [
                row[0]
                for row in db.execute(
                    f"EXPLAIN SELECT rel_path FROM experiments WHERE archive_id = :a ORDER BY {order} LIMIT 5",
                    {"a": index.archive_id},
                )
            ]
    assert "ix_experiments_listing" in plan[1] and not any("Sort" in line for line in plan), plan
