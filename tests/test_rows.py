"""The one query for the rows below a folder, shared by sync and the watcher: exact, and indexed on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycomex_index.db import IndexDatabase
from pycomex_index.rows import rows_below
from pycomex_index.store import open_archive_index

#: Paths around folder "a/b": below it, beside it, and names that sort close to "a/b/" in some collation.
PATHS = [
    "a/b/run",
    "a/b/deep/run",
    "a/b/\\\\x/run",
    "a/b/caf\u00e9",
    "a/b/0",
    "a/b",
    "a/b0/run",
    "a/b-c/run",
    "a/bc/run",
    "a/B/run",
    "a/b.c/run",
    "a/b\\xff/run",
    "b/run",
    "a0/run",
]
BELOW = {"a/b/run", "a/b/deep/run", "a/b/\\\\x/run", "a/b/caf\u00e9", "a/b/0"}


def _insert(connection: sqlite3.Connection) -> None:
    connection.executemany(
        "INSERT INTO experiments (archive_id, rel_path) VALUES (?, ?)",
        [(archive_id, path) for archive_id in (1, 2) for path in PATHS],
    )


def test_rows_below_a_folder_are_exactly_those_whose_path_starts_with_it_and_sqlite_finds_them_by_index(
    tmp_path: Path,
) -> None:
    (tmp_path / "archive").mkdir()
    with open_archive_index(str(tmp_path / "archive"), str(tmp_path / "index.sqlite3")) as index:
        archive_id = index.archive_id
        rows = [
            {
                "archive_id": archive_id,
                "rel_path": path,
                "namespace": path.rpartition("/")[0],
                "outcome": "done",
                "asset_count": 0,
                "disk_usage": 0,
                "meta_mtime_ns": 1,
                "meta_size": 1,
                "folder_mtime_ns": 1,
            }
            for path in PATHS
        ]
        with index.db.transaction():
            index.db.executemany(
                "INSERT INTO experiments (archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
                "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (:archive_id, :rel_path, :namespace, :outcome, "
                ":asset_count, :disk_usage, :meta_mtime_ns, :meta_size, :folder_mtime_ns)",
                rows,
            )
        assert {row[0] for row in rows_below(index.db, archive_id, "a/b")} == BELOW
        assert {row[0] for row in rows_below(index.db, archive_id, "a/b/\\\\x")} == {"a/b/\\\\x/run"}
        assert {row[0] for row in rows_below(index.db, archive_id, "")} == set(PATHS)
        stamps = list(rows_below(index.db, archive_id, "a/b/deep", "rel_path, meta_size"))
        assert [tuple(row) for row in stamps] == [("a/b/deep/run", 1)]

        captured: list[tuple[str, dict]] = []
        original = index.db.execute
        index.db.execute = lambda sql, params=None: captured.append((sql, params)) or original(sql, params)  # type: ignore[method-assign]
        list(rows_below(index.db, archive_id, "a/b"))
        sql, params = captured[-1]
        plan = " ".join(str(row[-1]) for row in original(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "SEARCH experiments USING COVERING INDEX" in plan and "rel_path>? AND rel_path<?" in plan, plan


class _LocaleLikeDatabase(IndexDatabase):
    """A stand-in for a PostgreSQL index whose collation, like en_US, ignores '/' at first when comparing."""

    url = "postgresql://stand-in"

    def __init__(self) -> None:
        self.connection = sqlite3.connect(":memory:")
        self.connection.create_collation("locale_like", _locale_like)
        self.connection.execute("CREATE TABLE experiments (archive_id INTEGER, rel_path TEXT COLLATE locale_like)")

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        return iter(self.connection.execute(sql, params or {}).fetchall())


def _locale_like(left: str, right: str) -> int:
    keys = [(text.replace("/", ""), text) for text in (left, right)]
    return (keys[0] > keys[1]) - (keys[0] < keys[1])


def test_rows_below_a_folder_do_not_depend_on_the_collation() -> None:
    db = _LocaleLikeDatabase()
    _insert(db.connection)
    # The range SQLite uses would be wrong here: "a/b/run" sorts after "a/b0" once the '/' is ignored.
    by_range = {
        row[0]
        for row in db.execute(
            "SELECT rel_path FROM experiments WHERE archive_id = 1 AND rel_path > 'a/b/' AND rel_path < 'a/b0'"
        )
    }
    assert by_range != BELOW
    assert {row[0] for row in rows_below(db, 1, "a/b")} == BELOW
    assert {row[0] for row in rows_below(db, 2, "a/b/deep")} == {"a/b/deep/run"}


@pytest.mark.parametrize("folder", ["a", "a/b", "a/b/deep"])
def test_sync_loads_the_stamps_of_one_folder_exactly_under_any_collation(folder: str) -> None:
    from pycomex_index.sync import _stamps

    db = _LocaleLikeDatabase()
    db.connection.execute("ALTER TABLE experiments ADD COLUMN meta_mtime_ns")
    db.connection.execute("ALTER TABLE experiments ADD COLUMN meta_size")
    db.connection.execute("ALTER TABLE experiments ADD COLUMN folder_mtime_ns")
    _insert(db.connection)
    below = {row[0] for row in rows_below(db, 1, folder)}
    assert set(_stamps(db, 1, folder=folder)) == {path for path in below if "/" not in path[len(folder) + 1 :]}
