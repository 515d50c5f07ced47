"""A PostgreSQL index made by an old version is upgraded in place by the current code, its rows kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycomex_index.postgresql import PostgresDatabase
from pycomex_index.store import HEAD_REVISION, open_archive_index, run_migrations
from pycomex_index.sync import sync_archive


def schema_differences(url: str) -> list:
    """What Alembic finds between a PostgreSQL index and the models, less the one difference they cannot state.

    ``ix_experiments_listing`` has ``start_time NULLS FIRST`` on PostgreSQL
    only (migration 0013); that index, reflected with exactly that, is expected.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from pycomex_index.models import Base

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    in_the_models = [f"experiments.{name}" for name in ("archive_id", "start_time", "rel_path", "outcome", "duration")]
    on_postgresql = [name + " NULLS FIRST" if name.endswith(".start_time") else name for name in in_the_models]
    expected = [("add_index", in_the_models), ("remove_index", on_postgresql)]
    found = [
        (kind, [str(expression) for expression in index.expressions])
        for kind, index in (difference[:2] for difference in differences if isinstance(difference, tuple))
        if getattr(index, "name", None) == "ix_experiments_listing"
    ]
    assert sorted(found) == sorted(expected), found
    return [
        difference
        for difference in differences
        if not (isinstance(difference, tuple) and getattr(difference[1], "name", None) == "ix_experiments_listing")
    ]


def test_an_index_from_before_0007_is_upgraded_keeping_its_rows(archive: Path, postgresql_cluster: Any) -> None:
    """Revision 0006 (before paths compared bytewise, liveness, typed parameters, identity, lease, host)."""
    url = postgresql_cluster.new_database(icu_locale="en-US")
    old = PostgresDatabase(url)
    run_migrations(old, "0006")
    assert old.fetch_one("SELECT version_num FROM alembic_version") == ("0006",)
    # Ids from the sequences, as the old version wrote them (a given id would leave a sequence behind).
    (archive_id,) = old.fetch_row(
        "INSERT INTO archives (root, created_at) VALUES (:root, 0) RETURNING id", {"root": str(archive)}
    )
    for rel_path in ("old/run", "old/run#2", "old/run/below"):
        (id_,) = old.fetch_row(
            "INSERT INTO experiments (archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
            "meta_mtime_ns, meta_size, folder_mtime_ns) "
            "VALUES (:archive_id, :rel_path, 'old', 'done', 1, 10, 1, 1, 1) RETURNING id",
            {"archive_id": archive_id, "rel_path": rel_path},
        )
        old.execute(
            "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json) "
            "VALUES (:id, '{}', '{\"A\": 1}')",
            {"id": id_},
        )
    # Its sync kept a digest of each folder it stored ("old", "old/run" hold rows; this one is stale).
    for folder in ("old", "old/run"):
        old.execute(
            "INSERT INTO folder_digests (archive_id, folder, digest) VALUES (:archive_id, :folder, 'stale')",
            {"archive_id": archive_id, "folder": folder},
        )
    (run_id,) = old.fetch_row(
        "INSERT INTO modify_runs (archive_id, started_at, metadata_code) VALUES (:archive_id, 5, 'm') RETURNING id",
        {"archive_id": archive_id},
    )
    old.execute(
        "INSERT INTO modify_journal (run_id, rel_path, previous_content, written_sha256) "
        "VALUES (:run_id, 'old/run', '{}', 'x')",
        {"run_id": run_id},
    )
    old.close()

    with open_archive_index(str(archive), url) as index:
        db = index.db
        assert db.fetch_one("SELECT version_num FROM alembic_version") == (HEAD_REVISION,)
        assert index.archive_id == archive_id  # the archive row adopted the archive's identity, not a second row
        assert db.fetch_one("SELECT COUNT(*) FROM archives") == (1,)
        rows = db.execute("SELECT rel_path, parameter_count IS NULL FROM experiments ORDER BY rel_path")
        # Byte order since 0007 ('#' < '/'), whatever the database's en-US collation says.
        assert [row[0] for row in rows] == ["old/run", "old/run#2", "old/run/below"]
        assert db.fetch_one(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = 'experiments' AND column_name = 'rel_path'"
        ) == ("C",)
        assert db.fetch_one("SELECT SUM(experiments) FROM experiment_summary") == (3,)  # filled by 0012
        assert db.fetch_one("SELECT id, metadata_code, host FROM modify_runs") == (run_id, "m", None)
        assert db.fetch_one("SELECT rel_path FROM modify_journal") == ("old/run",)
        report = sync_archive(index, check_assets=False)
        assert (report.removed, report.added) == (3, 8)
        assert db.fetch_one("SELECT COUNT(*) FROM experiments") == (8,)
    assert schema_differences(url) == []
