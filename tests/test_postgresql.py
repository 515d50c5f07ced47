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
