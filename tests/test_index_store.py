"""The index file: where it lives, Alembic migrations, WAL, and what start-up must not import."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycomex_index.cli import cli
from pycomex_index.store import HEAD_REVISION, open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import FIXTURE_ARCHIVE, _copy_writable, make_metadata, sqlite_index_at_revision, write_meta


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


@pytest.mark.sqlite_only("the default SQLite file; test_postgresql.py checks a new PostgreSQL index against the models")
def test_a_new_index_is_created_at_head_and_matches_the_models(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        location = Path(index.location)
    assert location == archive / ".pycomex_index" / "index.sqlite3"
    assert _schema_differences(location) == []


def test_the_experiment_model_has_exactly_the_columns_of_the_one_definition() -> None:
    from pycomex_index.discovery import EXPERIMENT_COLUMNS
    from pycomex_index.models import Experiment

    keys = ["id", "archive_id"]
    assert [column.name for column in Experiment.__table__.columns] == keys + list(EXPERIMENT_COLUMNS)


@pytest.mark.sqlite_only("builds a SQLite file at an old revision")
def test_an_index_at_the_first_revision_is_upgraded_keeping_its_rows(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite_index_at_revision(path, "0001", archive)
    assert old.fetch_one("SELECT version_num FROM alembic_version")[0] == "0001"
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


@pytest.mark.sqlite_only("builds a SQLite file at an old revision")
def test_an_index_at_revision_0007_gains_the_liveness_table_keeping_its_rows(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "0007.sqlite3"
    old = sqlite_index_at_revision(path, "0007", archive)
    old.execute(
        "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
        "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (7, 1, 'old/run', 'old', 'running', 1, 10, 1, 1, 1)"
    )
    old.close()

    with open_archive_index(str(archive), str(path)) as index:
        assert index.db.fetch_one("SELECT version_num FROM alembic_version")[0] == HEAD_REVISION
        assert index.db.fetch_one("SELECT rel_path, outcome FROM experiments") == ("old/run", "running")
        assert index.db.fetch_one("SELECT COUNT(*) FROM run_liveness")[0] == 0


def _insert_done_runs(old, documents: dict[int, tuple[str, int]]) -> None:
    """Done runs ``old/run<id>`` in an index at an old revision, ``{id: (parameters_json, needs_python)}``."""
    for id_, (parameters, needs_python) in documents.items():
        old.execute(
            "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
            f"meta_mtime_ns, meta_size, folder_mtime_ns) VALUES ({id_}, 1, 'old/run{id_}', 'old', 'done', 1, 10, 1, 1, 1)"
        )
        old.execute(
            "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json, needs_python) "
            "VALUES (:id, '{}', :parameters, :needs_python)",
            {"id": id_, "parameters": parameters, "needs_python": needs_python},
        )


@pytest.mark.sqlite_only("builds a SQLite file at an old revision")
def test_an_index_at_0008_gets_its_parameter_columns_filled(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite_index_at_revision(path, "0008", archive)
    documents = {
        7: ('{"A":0.30000000000000004,"B":"x","C":true,"D":null,"E":[1],"F":9007199254740993,"__PREFIX__":1e-05}', 0),
        8: ('{"A":NaN,"__PREFIX__":"p"}', 1),
    }
    _insert_done_runs(old, documents)
    old.close()

    with open_archive_index(str(archive), str(path)) as index:
        db = index.db
        specials = dict(db.execute("SELECT id, special_parameters_json FROM experiments"))
        assert specials[8] is None and json.loads(specials[7]) == {"__PREFIX__": 1e-05}
        typed = set(
            db.execute(
                "SELECT n.name, p.number, p.text FROM experiment_parameters p JOIN parameter_names n ON n.id = p.name_id "
                "WHERE p.experiment_id = 7"
            )
        )
        # Lists, null and an integer a float cannot hold have no number; the NaN document has no rows at all.
        assert typed == {
            ("A", 0.30000000000000004, None),
            ("B", None, "x"),
            ("C", 1.0, None),
            ("F", None, None),
            ("__PREFIX__", 1e-05, None),
        }
        assert db.fetch_one("SELECT COUNT(*) FROM experiment_parameters WHERE experiment_id = 8")[0] == 0
    assert _schema_differences(path) == []


@pytest.mark.sqlite_only("builds a SQLite file at an old revision")
def test_an_index_at_0013_gets_each_runs_prefix_as_str_shows_it(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite_index_at_revision(path, "0013", archive)
    documents = {
        7: ('{"__PREFIX__":"ablation","A":1}', 0),
        8: ('{"__PREFIX__":1e-05}', 0),
        9: ('{"__PREFIX__":null}', 0),
        10: ('{"A":1}', 0),
        11: ('{"__PREFIX__":NaN}', 1),
        12: ('{"__PREFIX__":"lone \\udcff"}', 1),
        13: ('{"__PREFIX__":[1, true]}', 0),
    }
    _insert_done_runs(old, documents)
    # A run whose metadata could not be read has no documents.
    old.execute(
        "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
        "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (14, 1, 'old/broken', 'old', 'error', 1, 10, 1, 1, 1)"
    )
    old.close()

    with open_archive_index(str(archive), str(path)) as index:
        prefixes = dict(index.db.execute("SELECT id, prefix FROM experiments"))
    # A missing parameter and text no database stores (a lone surrogate) stay NULL: scan reads those documents.
    assert prefixes == {7: "ablation", 8: "1e-05", 9: "None", 10: None, 11: "nan", 12: None, 13: "[1, True]", 14: None}
    assert _schema_differences(path) == []


@pytest.mark.sqlite_only("SQLite's WAL and busy timeout")
def test_the_index_is_in_wal_mode(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        assert index.db.fetch_one("PRAGMA journal_mode")[0] == "wal"
        assert index.db.fetch_one("PRAGMA busy_timeout")[0] > 0


@pytest.mark.sqlite_only("SQLite's switch to WAL")
def test_a_new_index_switches_to_wal_under_the_migration_lock(archive: Path, tmp_path: Path) -> None:
    # Processes opening a new index at once all asked SQLite for the exclusive lock of the switch, and all but
    # one failed at once with "database is locked" (test_concurrency met it one run in ten): they take turns.
    import fcntl
    import threading

    location = tmp_path / "new.sqlite3"
    sqlite3.connect(location).close()  # a new, empty file in rollback mode, as a first opener leaves it
    opened: list[str] = []
    with open(str(location) + ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # a migration in progress elsewhere

        def open_it() -> None:
            with open_archive_index(str(archive), str(location)) as index:
                opened.append(index.db.fetch_one("PRAGMA journal_mode")[0])

        opener = threading.Thread(target=open_it)
        opener.start()
        opener.join(1.0)
        assert opener.is_alive() and not opened  # waits for its turn...
        peek = sqlite3.connect(location)
        assert peek.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # ...before it switches
        peek.close()
    opener.join(30)
    assert opened == ["wal"]


@pytest.mark.sqlite_only("where the SQLite file is placed")
def test_index_option_and_environment_variable_place_the_index(
    archive: Path, tmp_path: Path, run_cli, monkeypatch
) -> None:
    explicit = tmp_path / "elsewhere" / "explicit.sqlite3"
    assert run_cli("archive", "list", "--path", str(archive), "--index", str(explicit)).exit_code == 0
    assert explicit.exists()
    assert not (archive / ".pycomex_index" / "index.sqlite3").exists()

    from_env = tmp_path / "env.sqlite3"
    monkeypatch.setenv("PYCOMEX_INDEX", str(from_env))
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    assert from_env.exists()


@pytest.mark.sqlite_only("a SQLite file's path must not be URL-decoded")
@pytest.mark.parametrize("folder_name", ["pc%41t", "100%"])
def test_a_percent_sign_in_the_archive_or_index_path_is_taken_literally(
    tmp_path: Path, run_cli, folder_name: str
) -> None:
    # A URL would decode "%41" to "A" and open (or fail to open) another file; the path must reach SQLite as given.
    archive = _copy_writable(FIXTURE_ARCHIVE, tmp_path / folder_name / "results")
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 8
    assert (archive / ".pycomex_index" / "index.sqlite3").is_file()
    elsewhere = tmp_path / folder_name / "elsewhere.sqlite3"
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(elsewhere))
    assert result.exit_code == 0, result.output
    assert elsewhere.is_file()
    assert not (tmp_path / "pcAt").exists()


@pytest.mark.sqlite_only("a sqlite:/// URL")
def test_a_sqlalchemy_url_works_as_index(archive: Path, tmp_path: Path, run_cli) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.sqlite3'}?timeout=30"  # the query string routes it through SQLAlchemy
    result = run_cli("archive", "list", "--path", str(archive), "--index", url, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 8
    overview = json.loads(run_cli("archive", "overview", "--path", str(archive), "--index", url, "--json").stdout)
    assert overview["total"] == 8
    status = json.loads(run_cli("index", "status", "--path", str(archive), "--index", url, "--json").stdout)
    assert status["experiments"] == 8 and status["revision"] == HEAD_REVISION


@pytest.mark.sqlite_only("the SQLite file moves to the user cache")
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
    assert status["location"] == os.environ.get("PYCOMEX_INDEX", str(archive / ".pycomex_index" / "index.sqlite3"))
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


def test_rebuild_help_says_what_rebuild_does(run_cli) -> None:
    # A rebuild re-reads every experiment but never empties the index (a concurrent reader keeps its rows).
    shown = " ".join(run_cli("index", "sync", "--help").stdout.split())
    assert "Read every experiment again" in shown and "Forget" not in shown


@pytest.mark.sqlite_only("the SQLite file itself")
def test_the_index_database_is_a_plain_sqlite_file_other_tools_can_read(archive: Path) -> None:
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        location = index.location
    connection = sqlite3.connect(location)
    assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 8
    assert connection.execute("SELECT COUNT(*) FROM experiment_fields").fetchone()[0] == 8
    connection.close()


# ------------------------------------------------------------------------- a damaged or unwritable index heals

DAMAGE_EXPERIMENTS = 300
#: Which b-tree to damage, and a query that reads all of it (so the test can prove SQLite reports SQLITE_CORRUPT).
DAMAGE_TARGETS = {
    "experiments": "SELECT * FROM experiments NOT INDEXED",
    "experiment_fields": "SELECT * FROM experiment_fields",
    "ix_experiments_stamps": "SELECT archive_id, rel_path, meta_mtime_ns FROM experiments INDEXED BY ix_experiments_stamps WHERE archive_id > 0",
    "ix_experiments_listing": "SELECT archive_id, start_time, rel_path FROM experiments INDEXED BY ix_experiments_listing WHERE archive_id > 0",
    "modify_journal": "SELECT * FROM modify_journal",
}


def _invoke(*args: str, env: dict[str, str]):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def damage_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pristine archive of 300 runs whose index holds a modify journal (300 entries) and an export (300 members).

    Built once; ``damaged_archive`` copies it back into the same place for each
    test, since the index stores the archive's absolute path.
    """
    base = tmp_path_factory.mktemp("damage")
    env = {"PYCOMEX_INDEX_NO_PROGRESS": "1", "XDG_CACHE_HOME": str(base / "cache"), "PYCOMEX_INDEX": ""}
    pristine = base / "pristine"
    for number in range(DAMAGE_EXPERIMENTS):
        write_meta(
            pristine / f"sweep_{number % 7}" / f"run_{number:04d}",
            make_metadata(
                start_time=1700000000.0 + number, parameters={"LEARNING_RATE": number / 1000, "BATCH_SIZE": 32}
            ),
        )
    for args in (
        ("archive", "list"),
        ("archive", "modify", "--all", "--modify-parameters", "p['BATCH_SIZE'] = 64"),
        ("archive", "compress", "--all", "--name", str(base / "backup.zip")),
    ):
        result = _invoke(*args, "--path", str(pristine), env=env)
        assert result.exit_code == 0, result.output
    index_file = pristine / ".pycomex_index" / "index.sqlite3"
    assert not Path(f"{index_file}-wal").exists()  # checkpointed on close: every page is in the main file
    return {"base": base, "pristine": pristine, "live": base / "results"}


@pytest.fixture
def damaged_archive(damage_site: dict[str, Path]) -> Path:
    live = damage_site["live"]
    shutil.rmtree(live, ignore_errors=True)
    # The archive keeps its absolute path (the index records it); the pristine copy's root is rewritten.
    shutil.copytree(damage_site["pristine"], live)
    connection = sqlite3.connect(live / ".pycomex_index" / "index.sqlite3")
    connection.execute("UPDATE archives SET root = ?", (str(live),))
    connection.commit()
    connection.close()
    return live


def _leaf_pages(database: Path, btree: str) -> list[int]:
    connection = sqlite3.connect(database)
    pages = [
        row[0]
        for row in connection.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", (btree,)
        )
    ]
    connection.close()
    return pages


def _wreck_pages(database: Path, pages: list[int], seed: int = 9) -> None:
    """Overwrite whole pages with garbage; the 100-byte header and page 1 (the schema) are never touched."""
    page_size = 4096
    assert 1 not in pages
    garbage = random.Random(seed)
    with open(database, "r+b") as file:
        for page in pages:
            file.seek((page - 1) * page_size)
            file.write(bytes(garbage.randrange(256) for _ in range(page_size)))


def _damage(database: Path, btree: str) -> None:
    leaves = _leaf_pages(database, btree)
    assert len(leaves) >= 3, leaves  # a first and a last page stay readable around the damage
    middle = len(leaves) // 2
    _wreck_pages(database, leaves[middle - 1 : middle + 1] if len(leaves) >= 5 else leaves[middle : middle + 1])
    connection = sqlite3.connect(database)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        connection.execute(DAMAGE_TARGETS[btree]).fetchall()
    connection.close()
    assert raised.value.sqlite_errorname == "SQLITE_CORRUPT"


def _salvaged(database: Path) -> dict[str, int]:
    connection = sqlite3.connect(database)
    counts = {
        table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("modify_runs", "modify_journal", "exports", "export_members")
    }
    connection.close()
    return counts


#: (command, a b-tree it reads, whether it succeeds at once): damage met while opening or refreshing, or by
#: ``index sync``, is mended and the command goes on; damage met while a command shows its result is mended
#: and the command fails once ("run the command again"), since it may have shown half a listing.
DAMAGE_CASES = [
    (["index", "sync"], "ix_experiments_stamps", True),
    (["archive", "list"], "experiments", False),
    # A select SQL cannot decide: Python reads every row's parameters, hence experiment_fields (one SQL decides
    # from the typed parameters alone never reads that table, and rightly shows its result).
    (["archive", "list", "--select", "str(p['LEARNING_RATE']) != ''"], "experiment_fields", False),
    (["archive", "tail", "-n", "300"], "ix_experiments_listing", False),
    (["index", "sync", "--rebuild"], "experiments", True),
    (["index", "sync", "--rebuild"], "experiment_fields", True),
    (["index", "sync", "--rebuild"], "ix_experiments_stamps", True),
]


@pytest.mark.sqlite_only("damaged SQLite pages")
@pytest.mark.parametrize(
    ("command", "btree", "at_once"),
    DAMAGE_CASES,
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_damaged_pages_are_set_aside_and_rebuilt_keeping_journal_and_exports(
    damaged_archive: Path, run_cli, command: list[str], btree: str, at_once: bool
) -> None:
    index_file = damaged_archive / ".pycomex_index" / "index.sqlite3"
    _damage(index_file, btree)

    first = run_cli(*command, "--path", str(damaged_archive))
    assert "Traceback" not in first.output
    if at_once:
        assert first.exit_code == 0, first.output
    else:
        assert first.exit_code == 65, first.output
        errors = [line for line in first.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "run the command again" in errors[0] and "malformed" in errors[0], first.stderr
    second = run_cli(*command, "--path", str(damaged_archive))
    assert second.exit_code == 0, second.output
    if command[:2] == ["archive", "list"]:
        assert len(second.stdout.splitlines()) == DAMAGE_EXPERIMENTS

    set_aside = [
        path for path in index_file.parent.glob("index.sqlite3.damaged-*") if not path.name.endswith(("-wal", "-shm"))
    ]
    assert len(set_aside) == 1
    warnings = [line for line in first.stderr.splitlines() if "unusable" in line]
    assert (
        len(warnings) == 1
        and "kept 1 modify runs with 300 journal entries and 1 exports with 300 members" in warnings[0]
    )
    assert _salvaged(index_file) == {"modify_runs": 1, "modify_journal": 300, "exports": 1, "export_members": 300}
    status = json.loads(run_cli("index", "status", "--path", str(damaged_archive), "--json").stdout)
    assert status["experiments"] == DAMAGE_EXPERIMENTS and len(status["exports"]) == 1


@pytest.mark.sqlite_only("a damaged SQLite file is rebuilt")
def test_undo_works_after_the_index_was_rebuilt(damaged_archive: Path, run_cli) -> None:
    index_file = damaged_archive / ".pycomex_index" / "index.sqlite3"
    _damage(index_file, "experiments")
    run_cli("archive", "list", "--path", str(damaged_archive))
    run_cli("archive", "list", "--path", str(damaged_archive))
    result = run_cli("archive", "undo", "--path", str(damaged_archive), "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(f"Restored {DAMAGE_EXPERIMENTS} files.\n")
    listed = json.loads(
        run_cli("archive", "list", "--path", str(damaged_archive), "--select", "p['BATCH_SIZE'] == 32", "--json").stdout
    )
    assert len(listed) == DAMAGE_EXPERIMENTS


@pytest.mark.sqlite_only("damaged SQLite pages")
def test_a_damaged_journal_keeps_its_readable_entries_and_says_what_was_lost(damaged_archive: Path, run_cli) -> None:
    index_file = damaged_archive / ".pycomex_index" / "index.sqlite3"
    _damage(index_file, "modify_journal")
    result = run_cli("archive", "undo", "--path", str(damaged_archive), "--yes")
    assert result.exit_code == 65, result.output
    assert result.stderr.count("Error:") == 1 and "run the command again" in result.stderr
    warning = next(line for line in result.stderr.splitlines() if "unusable" in line)
    assert "some were on damaged pages: modify_journal" in warning
    kept = _salvaged(index_file)
    assert kept["modify_runs"] == 1 and kept["exports"] == 1 and kept["export_members"] == 300
    assert 200 < kept["modify_journal"] < 300  # two leaf pages lost, the rest read past them
    (aside,) = [
        path for path in index_file.parent.glob("index.sqlite3.damaged-*") if not path.name.endswith(("-wal", "-shm"))
    ]
    assert aside.stat().st_size > 0  # the lost entries stay in the file set aside


# ------------------------------------------------------------------------- an index that cannot be written


@pytest.fixture
def real_disk_folder():
    """A folder on the real disk (chattr does not work on tmpfs), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pycomex-index-test-", dir="/var/tmp"))
    yield folder
    subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def _make_unwritable(path: Path) -> None:
    """Read-only by permissions for a user; root ignores those, so for root the file is made immutable."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {result.stderr.strip()}")


@pytest.mark.sqlite_only("an immutable SQLite file")
def test_an_unwritable_index_serves_reads_with_one_warning_and_refuses_writes(real_disk_folder: Path, run_cli) -> None:
    archive = _copy_writable(FIXTURE_ARCHIVE, real_disk_folder / "results")
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    before = index_file.read_bytes()
    _make_unwritable(index_file)

    for command in (["archive", "list"], ["archive", "overview"], ["archive", "scan"], ["index", "status"]):
        result = run_cli(*command, "--path", str(archive))
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
        assert len(warnings) == 1 and "could not be updated" in warnings[0] and "stale" in warnings[0], result.stderr
    assert len(run_cli("archive", "list", "--path", str(archive)).stdout.splitlines()) == 8

    for command in (
        ["archive", "delete", "--all", "--yes"],
        ["archive", "modify", "--all", "--modify-parameters", "p['X'] = 1"],
        ["index", "sync"],
    ):
        result = run_cli(*command, "--path", str(archive))
        assert result.exit_code == 77, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "cannot be written" in errors[0], result.stderr
    assert index_file.read_bytes() == before
    assert len(list(archive.rglob("experiment_meta.json"))) == 8
