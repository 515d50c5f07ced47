"""The one query for the rows below a folder, shared by sync and the watcher: exact, and index-served, on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pycomex_index.db import IndexDatabase
from pycomex_index.rows import rows_below
from pycomex_index.store import open_archive_index
from tests.conftest import sqlite_plan, statements_sent

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
    # Punctuation siblings: under en-US "exp/run#2" and "exp/run+lr" sort between "exp/run/" and "exp/run0".
    "exp/run/1",
    "exp/run#2",
    "exp/run+lr",
    "exp/run",
]
BELOW = {"a/b/run", "a/b/deep/run", "a/b/\\\\x/run", "a/b/caf\u00e9", "a/b/0"}


def _store(db: IndexDatabase, archive_id: int) -> None:
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
    with db.transaction():
        db.executemany(
            "INSERT INTO experiments (archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
            "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (:archive_id, :rel_path, :namespace, :outcome, "
            ":asset_count, :disk_usage, :meta_mtime_ns, :meta_size, :folder_mtime_ns)",
            rows,
        )


def _plan(db: IndexDatabase, archive_id: int, folder: str) -> str:
    """How the database finds rows_below's rows (the query as rows_below sends it)."""
    with statements_sent(db) as sent:
        list(rows_below(db, archive_id, folder))
    sql, params = sent[-1]
    if db.url.startswith("sqlite"):
        return sqlite_plan(db, sql, params)
    db.execute("ANALYZE experiments")  # without statistics the planner guesses which index is narrower
    with db.transaction():
        # A few rows: left to itself the planner scans the table; asked not to, it shows what an index can do.
        db.execute("SET LOCAL enable_seqscan = off")
        return " ".join(str(row[0]) for row in db.execute(f"EXPLAIN {sql}", params))


def test_rows_below_a_folder_are_exactly_those_whose_path_starts_with_it_found_by_index(
    tmp_path: Path, index_backend: str
) -> None:
    """On PostgreSQL the database sorts text by en-US rules (conftest), under which a plain range is wrong."""
    (tmp_path / "archive").mkdir()
    with open_archive_index(str(tmp_path / "archive")) as index:
        db, archive_id = index.db, index.archive_id
        _store(db, archive_id)
        assert {row[0] for row in rows_below(db, archive_id, "a/b")} == BELOW
        assert {row[0] for row in rows_below(db, archive_id, "a/b/\\\\x")} == {"a/b/\\\\x/run"}
        assert {row[0] for row in rows_below(db, archive_id, "")} == set(PATHS)
        assert {row[0] for row in rows_below(db, archive_id, "exp/run")} == {"exp/run/1"}
        stamps = list(rows_below(db, archive_id, "a/b/deep", "rel_path, meta_size"))
        assert [tuple(row) for row in stamps] == [("a/b/deep/run", 1)]
        plan = _plan(db, archive_id, "a/b")
        if index_backend == "sqlite":
            assert "SEARCH experiments USING COVERING INDEX" in plan and "rel_path>? AND rel_path<?" in plan, plan
        else:
            assert "Index" in plan and "rel_path >" in plan and "rel_path <" in plan and "Filter" not in plan, plan


def test_rows_below_a_folder_do_not_depend_on_the_column_collation(postgresql_cluster: Any, tmp_path: Path) -> None:
    """Even a rel_path column in a language's collation (not "C", as migration 0007 makes it) gives exact rows."""
    (tmp_path / "archive").mkdir()
    url = postgresql_cluster.new_database(icu_locale="en-US", at_head=True)
    with open_archive_index(str(tmp_path / "archive"), url) as index:
        db, archive_id = index.db, index.archive_id
        db.execute('ALTER TABLE experiments ALTER COLUMN rel_path TYPE text COLLATE "en-US-x-icu"')
        _store(db, archive_id)
        # The plain range is wrong here: "exp/run#2" lies between "exp/run/" and "exp/run0" under en-US.
        by_plain_range = db.execute(
            "SELECT rel_path FROM experiments WHERE rel_path > 'exp/run/' AND rel_path < 'exp/run0'"
        )
        assert {row[0] for row in by_plain_range} != {"exp/run/1"}
        assert {row[0] for row in rows_below(db, archive_id, "exp/run")} == {"exp/run/1"}
        assert {row[0] for row in rows_below(db, archive_id, "a/b")} == BELOW


@pytest.mark.parametrize("folder", ["a", "a/b", "a/b/deep", "exp"])
def test_sync_loads_the_stamps_of_one_folder_exactly(folder: str, tmp_path: Path, index_backend: str) -> None:
    from pycomex_index.sync import _stamps

    (tmp_path / "archive").mkdir()
    with open_archive_index(str(tmp_path / "archive")) as index:
        db, archive_id = index.db, index.archive_id
        _store(db, archive_id)
        below = {row[0] for row in rows_below(db, archive_id, folder)}
        assert set(_stamps(db, archive_id, folder=folder)) == {
            path for path in below if "/" not in path[len(folder) + 1 :]
        }
