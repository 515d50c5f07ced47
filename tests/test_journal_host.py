"""The modify journal records each modify's host (migration 0013), and undo names another host's modify."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycomex_index.store import HEAD_REVISION, open_archive_index
from tests.conftest import index_query, sqlite_index_at_revision


def test_undo_on_another_host_names_the_host_the_modify_ran_on(
    archive: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX_HOSTNAME", "node-a")
    modified = run_cli("archive", "modify", "--path", str(archive), "--all", "--modify-metadata", "m['lab'] = 1")
    assert modified.exit_code == 0, modified.output
    assert index_query(archive, "SELECT host FROM modify_runs WHERE archive_id = :archive_id") == [("node-a",)]

    preview = run_cli("archive", "undo", "--path", str(archive), input="n\n")
    assert preview.stdout.startswith("Modify 1 of ") and " on node-a " not in preview.stdout, preview.output

    monkeypatch.setenv("PYCOMEX_INDEX_HOSTNAME", "node-b")
    undone = run_cli("archive", "undo", "--path", str(archive), "--yes")
    assert undone.exit_code == 0, undone.output
    first_line = undone.stdout.splitlines()[0]
    assert first_line.startswith("Modify 1 of ") and first_line.endswith(" on node-a changed 7 files:"), first_line


@pytest.mark.sqlite_only("builds a SQLite file at an old revision (tests/test_postgresql_migrations.py: PostgreSQL)")
def test_an_index_at_0012_keeps_its_journal_and_gains_the_host_column(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "0012.sqlite3"
    old = sqlite_index_at_revision(path, "0012", archive)
    old.execute(
        "INSERT INTO modify_runs (id, archive_id, started_at, finished_at, metadata_code) VALUES (3, 1, 5, 6, 'm')"
    )
    old.execute(
        "INSERT INTO modify_journal (run_id, rel_path, previous_content, written_sha256) VALUES (3, 'a/b', '{}', 'x')"
    )
    old.close()

    with open_archive_index(str(archive), str(path)) as index:
        assert index.db.fetch_one("SELECT version_num FROM alembic_version")[0] == HEAD_REVISION
        assert index.db.fetch_one("SELECT id, started_at, metadata_code, host FROM modify_runs") == (3, 5.0, "m", None)
        assert index.db.fetch_one("SELECT run_id, rel_path FROM modify_journal") == (3, "a/b")
        # The journal's foreign key survived the table copy SQLite's batch mode makes.
        index.db.execute("DELETE FROM modify_runs")
        assert index.db.fetch_one("SELECT COUNT(*) FROM modify_journal")[0] == 0
