"""What PostgreSQL does differently from SQLite, pinned on a real server (issue 12, item 3).

Concurrent first opens, collation, NULL order, NUL characters, error text and
passwords: each a way a shared PostgreSQL index could fail or disagree with
a SQLite one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import index_query, make_metadata, write_meta


def test_four_processes_opening_an_empty_database_at_once_all_succeed(archive: Path, postgresql_url: str) -> None:
    # Each runs the migrations unless another already did: without a lock two create the same tables.
    # Imports first, then all open at the same moment, so the race is met every time.
    opening = (
        "import sys, time; from pycomex_index.store import open_archive_index; import alembic.command; "
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); open_archive_index(sys.argv[1], sys.argv[2]).close()"
    )
    start_at = str(time.time() + 4)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", opening, str(archive), postgresql_url, start_at], stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [process.communicate()[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, "\n".join(errors)


def test_rows_below_a_folder_are_found_by_byte_order_in_a_non_c_collation(
    tmp_path: Path, postgresql_cluster, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In en-US, '#' and '+' sort around '/', so "exp/run" < x < "exp/run0" caught the siblings too.
    monkeypatch.setenv("PYCOMEX_INDEX", postgresql_cluster.new_database(icu_locale="en-US"))
    archive = tmp_path / "results"
    for rel_path in ("exp/run/a", "exp/run/b", "exp/run#2", "exp/run+lr", "exp/run0", "exp/runner", "exp/run.x"):
        write_meta(archive / rel_path, make_metadata())
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    below = index_query(
        archive,
        "SELECT rel_path FROM experiments WHERE archive_id = :archive_id AND rel_path > :low AND rel_path < :high",
        {"low": "exp/run/", "high": "exp/run0"},
    )
    assert sorted(below) == [("exp/run/a",), ("exp/run/b",)]
    ordered = index_query(archive, "SELECT rel_path FROM experiments WHERE archive_id = :archive_id ORDER BY rel_path")
    assert [row[0] for row in ordered] == sorted(row[0] for row in ordered)


def test_a_nul_character_in_metadata_never_fails_the_archive(archive: Path, run_cli, index_backend: str) -> None:
    write_meta(archive / "odd" / "run", make_metadata(name="nul\u0000name", description="a\u0000b"))
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) >= 8
    [(read_error,)] = index_query(
        archive, "SELECT read_error FROM experiments WHERE archive_id = :archive_id AND rel_path = 'odd/run'"
    )
    assert "NUL" in read_error


def test_a_database_that_cannot_be_reached_is_one_line_without_the_password(
    archive: Path, run_cli, postgresql_cluster
) -> None:
    url = postgresql_cluster.url("no_such_database").replace("postgres@", "postgres:s3cret@")
    result = run_cli("archive", "list", "--path", str(archive), "--index", url)
    assert result.exit_code != 0
    assert "s3cret" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "no_such_database" in result.output


def test_index_status_masks_the_password(archive: Path, run_cli, postgresql_url: str, monkeypatch) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX", postgresql_url.replace("postgres@", "postgres:s3cret@"))
    for command in (["index", "status"], ["index", "status", "--json"], ["index", "sync", "--json"]):
        result = run_cli(*command, "--path", str(archive))
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output and "postgres:***@" in result.output


def test_a_new_postgresql_index_matches_the_models(archive: Path, postgresql_url: str) -> None:
    from pycomex_index.store import open_archive_index
    from tests.test_postgresql_migrations import schema_differences

    open_archive_index(str(archive), postgresql_url).close()
    assert schema_differences(postgresql_url) == []
