"""The index file: where it lives, Alembic migrations, WAL, and what start-up must not import."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from pycomex_index.db import SqliteFileDatabase
from pycomex_index.store import HEAD_REVISION, open_archive_index, run_migrations
from pycomex_index.sync import sync_archive


def test_head_revision_constant_matches_the_shipped_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pycomex_index.store import migrations_folder

    config = Config()
    config.set_main_option("script_location", migrations_folder())
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def _schema_differences(database_path: Path) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from pycomex_index.models import Base

    engine = create_engine(f"sqlite:///{database_path}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return differences


def test_a_new_index_is_created_at_head_and_matches_the_models(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        location = Path(index.location)
    assert location == archive / ".pycomex_index" / "index.sqlite3"
    assert _schema_differences(location) == []


def test_an_index_at_the_first_revision_is_upgraded_keeping_its_rows(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = SqliteFileDatabase(str(path))
    run_migrations(old, "0001")
    assert old.fetch_one("SELECT version_num FROM alembic_version")[0] == "0001"
    old.execute("INSERT INTO archives (id, root, created_at) VALUES (1, :root, 0)", {"root": str(archive)})
    old.execute(
        "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
        "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (7, 1, 'old/run', 'old', 'done', 1, 10, 1, 1, 1)"
    )
    old.execute(
        "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json) VALUES (7, '{}', '{\"A\": 1}')"
    )
    old.close()

    with open_archive_index(str(archive), str(path)) as index:
        assert index.archive_id == 1
        assert index.db.fetch_one("SELECT version_num FROM alembic_version")[0] == HEAD_REVISION
        assert index.db.fetch_one(
            "SELECT e.namespace, f.parameters_json FROM experiments e "
            "JOIN experiment_fields f ON f.experiment_id = e.id WHERE e.rel_path = 'old/run'"
        ) == ("old", '{"A": 1}')
        # Every folder with rows has a digest row, empty, so the first read sync compares its rows.
        assert list(index.db.execute("SELECT folder, digest FROM folder_digests")) == [("old", None)]
        # The summary is filled from the rows already there, then kept by triggers.
        assert index.db.fetch_one("SELECT namespace, experiments, disk_usage FROM experiment_summary") == ("old", 1, 10)
        report = sync_archive(index, check_assets=False)
        assert (report.removed, report.added) == (1, 8)
        assert index.db.fetch_one("SELECT COUNT(*) FROM experiments WHERE rel_path = 'old/run'")[0] == 0
    assert _schema_differences(path) == []


def test_the_index_is_in_wal_mode(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        assert index.db.fetch_one("PRAGMA journal_mode")[0] == "wal"
        assert index.db.fetch_one("PRAGMA busy_timeout")[0] > 0


def test_index_option_and_environment_variable_place_the_index(archive: Path, tmp_path: Path, run_cli, monkeypatch) -> None:
    explicit = tmp_path / "elsewhere" / "explicit.sqlite3"
    assert run_cli("archive", "list", "--path", str(archive), "--index", str(explicit)).exit_code == 0
    assert explicit.exists()
    assert not (archive / ".pycomex_index" / "index.sqlite3").exists()

    from_env = tmp_path / "env.sqlite3"
    monkeypatch.setenv("PYCOMEX_INDEX", str(from_env))
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    assert from_env.exists()


def test_a_sqlalchemy_url_works_as_index(archive: Path, tmp_path: Path, run_cli) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.sqlite3'}?timeout=30"  # the query string routes it through SQLAlchemy
    result = run_cli("archive", "list", "--path", str(archive), "--index", url, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 8
    overview = json.loads(run_cli("archive", "overview", "--path", str(archive), "--index", url, "--json").stdout)
    assert overview["total"] == 8
    status = json.loads(run_cli("index", "status", "--path", str(archive), "--index", url, "--json").stdout)
    assert status["experiments"] == 8 and status["revision"] == HEAD_REVISION


def test_a_read_only_mount_gets_its_index_in_the_user_cache(archive: Path, tmp_path: Path, run_cli) -> None:
    """Root ignores permission bits, so simulate the read-only case the way a mount does: the index folder is a file."""
    (archive / ".pycomex_index").write_text("not a folder")
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 8
    assert list((tmp_path / "user-cache" / "pycomex-index").glob("results-*.sqlite3"))


def test_index_status_reports_location_rows_revision_and_last_sync(archive: Path, run_cli) -> None:
    never = json.loads(run_cli("index", "status", "--path", str(archive), "--json").stdout)
    assert never["last_sync_at"] is None and never["experiments"] == 0
    run_cli("index", "sync", "--path", str(archive))
    status = json.loads(run_cli("index", "status", "--path", str(archive), "--json").stdout)
    assert status["location"] == str(archive / ".pycomex_index" / "index.sqlite3")
    assert status["experiments"] == 8
    assert status["revision"] == HEAD_REVISION
    assert status["last_sync_at"] is not None
    text = run_cli("index", "status", "--path", str(archive)).stdout
    assert f"Schema revision: {HEAD_REVISION}" in text and "Experiments: 8" in text


def test_index_sync_and_rebuild(archive: Path, run_cli) -> None:
    first = json.loads(run_cli("index", "sync", "--path", str(archive), "--json").stdout)
    assert (first["added"], first["unchanged"]) == (8, 0)
    second = json.loads(run_cli("index", "sync", "--path", str(archive), "--json").stdout)
    assert (second["added"], second["unchanged"]) == (0, 8)
    rebuilt = json.loads(run_cli("index", "sync", "--rebuild", "--path", str(archive), "--json").stdout)
    assert (rebuilt["added"], rebuilt["updated"], rebuilt["unchanged"]) == (0, 8, 0)  # re-read, never emptied
    text = run_cli("index", "sync", "--path", str(archive)).stdout
    assert text.startswith("Synced ") and "8 unchanged" in text


def _modules_loaded_by(arguments: list[str], cwd: Path) -> set[str]:
    script = (
        "import sys, runpy\n"
        f"sys.argv = ['pycomex-index', *{arguments!r}]\n"
        "try:\n"
        "    from pycomex_index.cli import main\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)
    return set(result.stderr.split())


def test_help_imports_neither_sqlalchemy_nor_alembic_nor_rich(tmp_path: Path) -> None:
    modules = _modules_loaded_by(["--help"], tmp_path)
    assert "click" in modules
    assert not {"sqlalchemy", "alembic", "rich", "watchdog"} & modules


def test_a_read_command_on_a_current_index_does_not_import_alembic_or_sqlalchemy(archive: Path) -> None:
    first = _modules_loaded_by(["archive", "list", "--path", str(archive)], archive.parent)
    assert "alembic" in first  # the new index was created by the migrations
    again = _modules_loaded_by(["archive", "list", "--path", str(archive)], archive.parent)
    assert "pycomex_index.queries" in again
    assert not {"alembic", "sqlalchemy"} & again


def test_the_index_database_is_a_plain_sqlite_file_other_tools_can_read(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        location = index.location
    connection = sqlite3.connect(location)
    assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 8
    assert connection.execute("SELECT COUNT(*) FROM experiment_fields").fetchone()[0] == 8
    connection.close()
