"""A read of every row split in two halves by start time, the second run ahead on a connection of its own.

:meth:`pycomex_index.db.IndexDatabase.execute_pieces` and the halving in
:mod:`pycomex_index.queries`: the halves give the rows one query gives, in its
order, whatever lies at the split (runs without a start time, equal start
times); a failing half reports like any query; rows nobody reads stop the
query ahead; inside a transaction nothing runs ahead of this connection's writes.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pycomex_index import queries
from pycomex_index.db import SqliteFileDatabase
from pycomex_index.errors import IndexDamagedError
from pycomex_index.selection import compile_expression
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import add_awkward_runs, make_metadata, statements_sent, write_meta

pytestmark = pytest.mark.sqlite_only("reads run ahead on a second SQLite connection; PostgreSQL reads in one query")

#: Start times with a tie where the split falls: with the awkward runs, 15 runs, and the eighth start time is the tie's.
START_TIMES = [1700000000.0 + second for second in (1, 2, 3, 4, 5, 6, 6, 6)]


@pytest.fixture
def split_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "results"
    for number, start_time in enumerate(START_TIMES):
        # Names against the start times' order, so the order within the tie is the paths', not the files'.
        metadata = make_metadata(
            start_time=start_time, status="done" if number % 3 else "failed", parameters={"X": number}
        )
        write_meta(archive / "ns" / f"run{9 - number}", metadata)
    add_awkward_runs(archive)
    return archive


def test_the_split_falls_on_the_tie_and_the_halves_list_what_one_query_lists(
    split_archive: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [
        ["list", "--select", "m['status'] == 'done'"],
        ["list", "--select", "p['X'] % 2 == 0"],  # Python decides every row
        ["list", "--json", "--select", "m['status'] != 'failed'"],
        ["scan", "--group", "m['status']"],  # (its --json has the seconds since each group's last run)
        ["overview", "--select", "p['X'] > 2", "--json"],
    ]

    def outputs() -> list[str]:
        results = [run_cli("archive", *command, "--path", str(split_archive)) for command in commands]
        assert all(result.exit_code == 0 for result in results), [result.output for result in results]
        return [result.stdout for result in results]

    one_query = outputs()
    monkeypatch.setattr(queries, "HALVING_FROM_ROWS", 2)
    with open_archive_index(str(split_archive)) as index:
        split_at = queries._start_time_halving(index)
        assert split_at == START_TIMES[-1]  # three runs start then: the split falls on them
        with statements_sent(index.db) as sent:
            halved = list(queries.iter_selected_values(index, ["e.rel_path"], compile_expression("True")))
        assert any(":split_at" in sql for sql, _ in sent)  # it was read in halves
    assert [row for batch in halved for row in batch] == [
        (item["rel_path"],)
        for item in json.loads(run_cli("archive", "list", "--json", "--path", str(split_archive)).stdout)
    ]
    assert outputs() == one_query
    # The runs without a start time come first, the tie in path order.
    names = [line.split("/")[-1].split(" ")[0] for line in one_query[0].splitlines()]
    assert names[:2] == ["queued", "queued#2"] and names.index("run2") < names.index("run4")


def test_newest_first_the_newer_half_comes_first(split_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    select_all = compile_expression("True")
    with open_archive_index(str(split_archive)) as index:
        sync_archive(index)
        one_query = list(queries.iter_selected(index, ["e.rel_path"], select_all, newest_first=True))
        monkeypatch.setattr(queries, "HALVING_FROM_ROWS", 2)
        with statements_sent(index.db) as sent:
            halved = list(queries.iter_selected(index, ["e.rel_path"], select_all, newest_first=True))
        assert any(":split_at" in sql for sql, _ in sent)
    assert halved == one_query
    # Descending: the runs without a start time last, in descending path order too.
    assert [values for values, _, _ in one_query[-2:]] == [("exp/queued#2",), ("exp/queued",)]


@pytest.fixture
def database(tmp_path: Path):
    db = SqliteFileDatabase(str(tmp_path / "index.sqlite3"))
    db.execute("CREATE TABLE t (x INTEGER)")
    db.executemany("INSERT INTO t (x) VALUES (:x)", [{"x": x} for x in range(10)])
    assert db.runs_queries_ahead(), "these tests need a second CPU to run a query ahead on"
    yield db
    db.close()


def _threads_ahead() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "query ahead"]


def test_pieces_give_their_rows_in_the_order_of_the_pieces(database) -> None:
    pieces = [
        ("SELECT x FROM t WHERE x >= :at ORDER BY x DESC", {"at": 5}),
        ("SELECT x FROM t WHERE x < :at ORDER BY x", {"at": 5}),
        ("SELECT x * 10 FROM t WHERE x = 3", {}),
    ]
    assert [x for (x,) in database.execute_pieces(pieces)] == [9, 8, 7, 6, 5, 0, 1, 2, 3, 4, 30]
    assert _threads_ahead() == []


def test_a_piece_ahead_that_fails_reports_like_any_query_when_its_rows_are_reached(database) -> None:
    rows = database.execute_pieces([("SELECT x FROM t", {}), ("SELECT y FROM nowhere", {})])
    assert [x for (x,) in itertools.islice(rows, 10)] == list(range(10))
    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):  # what the query raises alone
        next(rows)
    assert _threads_ahead() == []


def test_a_damaged_index_met_ahead_is_the_library_s_error(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = SqliteFileDatabase(str(path))
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t (x) VALUES (:x)", [{"x": "x" * 3000} for _ in range(200)])
    db.close()
    damaged = bytearray(path.read_bytes())
    damaged[4096 * 3 : 4096 * 40] = b"\xff" * (4096 * 37)  # pages of the table, not the schema on page 1
    path.write_bytes(bytes(damaged))
    db = SqliteFileDatabase(str(path))
    try:
        with pytest.raises(IndexDamagedError):
            list(db.execute_pieces([("SELECT 1", {}), ("SELECT x FROM t ORDER BY x", {})]))
    finally:
        db.close()


def test_rows_nobody_reads_stop_the_query_ahead(database) -> None:
    # Ahead: a count over a billion generated rows, which would run for many minutes unless stopped.
    endless = (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000000) SELECT COUNT(*) FROM c"
    )
    rows = database.execute_pieces([("SELECT x FROM t", {}), (endless, {})])
    assert next(rows) == (0,)
    assert len(_threads_ahead()) == 1
    started = time.monotonic()
    del rows  # the caller stops reading (a limit reached, a pipe closed)
    assert _threads_ahead() == []
    assert time.monotonic() - started < 10


def test_inside_a_transaction_the_pieces_see_its_writes(database) -> None:
    with database.transaction():
        database.execute("INSERT INTO t (x) VALUES (100)")
        assert not database.runs_queries_ahead()
        rows = list(database.execute_pieces([("SELECT COUNT(*) FROM t", {}), ("SELECT MAX(x) FROM t", {})]))
    assert rows == [(11,), (100,)]
