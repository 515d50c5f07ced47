"""A first build: reader threads, and (SQLite) a bulk load without secondary indexes that a crash cannot leave so."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pycomex_index.sync as sync_module
from pycomex_index.bulk_load import LOCK_SUFFIX, SECONDARY_INDEXES
from pycomex_index.store import open_archive_index
from tests.conftest import index_query, make_metadata, write_meta

_LISTED = "SELECT rel_path, outcome, start_time, parameter_count, asset_count FROM experiments ORDER BY rel_path"


def _make_archive(root: Path, count: int) -> None:
    for number in range(count):
        write_meta(
            root / f"ns{number % 5}" / f"run{number:05}",
            make_metadata(start_time=1700000000.0 + number, parameters={"SEED": number}),
        )


def _experiment_indexes(index_file: Path) -> set[str]:
    with sqlite3.connect(index_file) as connection:
        rows = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'experiments' "
            "AND name NOT LIKE 'sqlite_autoindex%'"
        )
        return {name for (name,) in rows}


def _index_file(root: Path) -> Path:
    return root / ".pycomex_index" / "index.sqlite3"


def _reader_processes() -> set[int]:
    """This process's grandchildren: the workers a process pool forked from its (forkserver) child."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(stat_file.parent.name)] = int(fields[1])
    children = {pid for pid, parent in parents.items() if parent == os.getpid()}
    return {pid for pid, parent in parents.items() if parent in children}


@pytest.mark.parametrize("readers", ["threads", "processes"])
def test_readers_store_what_reading_in_one_thread_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_backend: str, readers: str
) -> None:
    # Small batches and chunks, so that several batches are read by several readers while others are stored.
    monkeypatch.setattr(sync_module, "BATCH_SIZE", 40)
    monkeypatch.setattr(sync_module, "READ_CHUNK", 7)
    monkeypatch.setattr(sync_module, "PROCESS_POOL_AFTER_BATCHES", 0 if readers == "processes" else 10**9)
    monkeypatch.setattr(sync_module, "_main_module_is_ours", lambda: True)  # pytest's main module is safe too
    threaded, serial = tmp_path / "threaded" / "results", tmp_path / "serial" / "results"
    for root in (threaded, serial):
        _make_archive(root, 300)
    (threaded / "ns1" / "run00001" / "experiment_meta.json").write_text("{broken")
    (serial / "ns1" / "run00001" / "experiment_meta.json").write_text("{broken")
    calls: list[tuple[int, int | None]] = []
    workers_seen: set[int] = set()

    def on_progress(done: int, total: int | None) -> None:
        calls.append((done, total))
        workers_seen.update(_reader_processes())

    with open_archive_index(str(threaded)) as index:
        report = sync_module.sync_archive(index, on_progress=on_progress)
    assert (report.added, report.unreadable) == (300, 1)
    assert bool(workers_seen) == (readers == "processes")
    assert calls[0] == (0, 300) and calls[-1] == (300, 300)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    threaded_rows = index_query(threaded, _LISTED)
    if index_backend == "postgresql":
        # Both archives would share the one database: compare with a serial read of the same archive instead.
        with open_archive_index(str(threaded)) as index:
            index.db.run_in_transaction(lambda: index.db.execute("DELETE FROM experiments"))
            index.db.run_in_transaction(lambda: index.db.execute("DELETE FROM folder_digests"))
        serial = threaded
    monkeypatch.setattr(sync_module, "READ_CHUNK", 10_000)  # every batch read in this thread
    with open_archive_index(str(serial)) as index:
        assert sync_module.sync_archive(index).added == 300
    assert index_query(serial, _LISTED) == threaded_rows
    assert len(threaded_rows) == 300


def test_prefetching_skips_what_cannot_be_opened_and_changes_no_record(tmp_path: Path) -> None:
    from pycomex_index.discovery import FolderStat, prefetch_metadata, read_experiment

    root = tmp_path / "results"
    _make_archive(root, 3)
    (root / "ns1" / "run00001" / "experiment_meta.json").write_text("{broken")
    (root / "ns3" / "odd" / "experiment_meta.json").mkdir(parents=True)  # a folder where the file should be
    folders = [FolderStat(rel, 0, 0, 0) for rel in ("ns0/run00000", "ns1/run00001", "ns2/run00002")]
    cannot_be_opened = [FolderStat(rel, 0, 0, 0) for rel in ("ns0/vanished", "../outside", "ns3/odd")]
    read_plainly = [read_experiment(str(root), folder) for folder in folders]
    prefetch_metadata(str(root), cannot_be_opened + folders)
    assert [read_experiment(str(root), folder) for folder in folders] == read_plainly
    assert [record.read_error is None for record in read_plainly] == [True, False, True]


def test_a_reader_process_that_dies_costs_no_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "BATCH_SIZE", 40)
    monkeypatch.setattr(sync_module, "READ_CHUNK", 5)
    monkeypatch.setattr(sync_module, "PROCESS_POOL_AFTER_BATCHES", 0)
    monkeypatch.setattr(sync_module, "_main_module_is_ours", lambda: True)
    root = tmp_path / "results"
    _make_archive(root, 400)
    killed: list[int] = []

    def kill_a_reader(done: int, total: int | None) -> None:
        if not killed and (workers := _reader_processes()):
            killed.append(min(workers))
            os.kill(killed[0], signal.SIGKILL)

    with open_archive_index(str(root)) as index:
        report = sync_module.sync_archive(index, on_progress=kill_a_reader)
    assert killed and report.added == 400 and report.unreadable == 0
    assert len(index_query(root, _LISTED)) == 400


def test_a_script_using_the_library_never_runs_again_in_reader_processes(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _make_archive(root, 120)
    runs = tmp_path / "runs.txt"
    script = tmp_path / "experiment.py"
    # No __main__ guard, as in many experiment scripts: a worker process importing it would run it again.
    script.write_text(
        "import pycomex_index.sync as sync\n"
        "from pycomex_index.store import open_archive_index\n"
        f"open({str(runs)!r}, 'a').write('ran\\n')\n"
        "sync.BATCH_SIZE, sync.READ_CHUNK, sync.PROCESS_POOL_AFTER_BATCHES = 20, 5, 0\n"
        f"with open_archive_index({str(root)!r}) as index:\n"
        "    assert sync.sync_archive(index).added == 120\n"
    )
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert runs.read_text() == "ran\n" and finished.stderr == ""


def test_reader_processes_import_the_program_s_package_not_one_in_the_working_directory(tmp_path: Path) -> None:
    # Run from a folder holding another pycomex_index (a checkout of this project: its source tree has no
    # pycomex_index.cli), as the command line, with reader processes from the second batch on.
    root = tmp_path / "results"
    _make_archive(root, 120)
    shadow = tmp_path / "checkout"
    (shadow / "pycomex_index").mkdir(parents=True)
    (shadow / "pycomex_index" / "__init__.py").write_text("")
    program = tmp_path / "bin" / "pycomex-index"
    program.parent.mkdir()
    program.write_text(
        "import sys\n"
        "import pycomex_index.sync as sync\n"
        "from pycomex_index.cli import main\n"
        "sync.BATCH_SIZE, sync.READ_CHUNK, sync.PROCESS_POOL_AFTER_BATCHES = 20, 5, 1\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    environment = {**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
    finished = subprocess.run(
        [sys.executable, str(program), "index", "sync", "--path", str(root)],
        cwd=shadow,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""  # a worker that failed to start printed its traceback here
    assert "120 added" in finished.stdout


@pytest.mark.sqlite_only("the bulk load drops and builds the indexes of a SQLite index file")
def test_a_first_build_ends_with_the_indexes_the_migrations_made(tmp_path: Path) -> None:
    from pycomex_index.models import Experiment

    declared = {str(index.name) for index in Experiment.__table__.indexes}  # type: ignore[attr-defined]
    assert declared == set(SECONDARY_INDEXES)
    migrated = tmp_path / "migrated.sqlite3"
    (tmp_path / "empty").mkdir()
    open_archive_index(str(tmp_path / "empty"), str(migrated)).close()  # migrated, never bulk-loaded
    root = tmp_path / "results"
    _make_archive(root, 50)
    with open_archive_index(str(root)) as index:
        assert sync_module.sync_archive(index).added == 50
    # The same definitions as the migrations': built from SECONDARY_INDEXES after the load, they must match.
    assert _index_definitions(_index_file(root)) == _index_definitions(migrated)
    assert set(_index_definitions(migrated)) == declared


def _index_definitions(index_file: Path) -> dict[str, tuple[str, str | None]]:
    """name -> the index's key columns, as SQLite reads them from its definition, and a partial index's WHERE."""
    with sqlite3.connect(index_file) as connection:
        return {
            name: (
                ", ".join(row[2] for row in connection.execute(f"PRAGMA index_info({name})")),
                _where_of(connection.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]),
            )
            for name in _experiment_indexes(index_file)
        }


def _where_of(definition: str) -> str | None:
    """The condition of a partial index's CREATE INDEX, spaced as one (None: not partial)."""
    _, where, condition = definition.partition(" WHERE ")
    return " ".join(condition.split()) if where else None


@pytest.mark.sqlite_only("the bulk load drops and builds the indexes of a SQLite index file")
def test_a_first_build_killed_without_its_indexes_is_mended_by_the_next_command(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _make_archive(root, 4000)
    index_file = _index_file(root)
    # Batches of 200, so that rows are committed while the indexes are gone: the next sync is then no first
    # build (which would drop and build them itself), and only the mending on open can bring them back.
    build = subprocess.Popen(
        [sys.executable, "-c", _BUILD_IN_SMALL_BATCHES, "index", "sync", "--path", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (index_file.exists() and _has_rows_but_no_indexes(index_file)):
            assert build.poll() is None, "the build ended before it was seen loading without its indexes"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        build.send_signal(signal.SIGKILL)
    finally:
        build.wait()
    assert build.returncode == -signal.SIGKILL
    assert _experiment_indexes(index_file) == set()
    with sqlite3.connect(index_file) as connection:  # not through the library, whose open would mend it
        assert 0 < connection.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] < 4000
    result = subprocess.run(
        [sys.executable, "-m", "pycomex_index", "archive", "list", "--path", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _experiment_indexes(index_file) == set(SECONDARY_INDEXES)
    assert len(result.stdout.splitlines()) >= 4000  # the list synced the rest of the archive
    assert len(index_query(root, "SELECT rel_path FROM experiments")) == 4000


_BUILD_IN_SMALL_BATCHES = (
    "import sys, pycomex_index.sync as sync; sync.BATCH_SIZE = 200; "
    "from pycomex_index.cli import main; sys.argv[0] = 'pycomex-index'; main()"
)


def _has_rows_but_no_indexes(index_file: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{index_file}?mode=ro", uri=True) as connection:
            (rows,) = connection.execute("SELECT COUNT(*) FROM experiments").fetchone()
    except sqlite3.Error:
        return False  # not made yet, or the schema is being created
    return rows > 0 and not _experiment_indexes(index_file)


@pytest.mark.sqlite_only("the bulk load drops and builds the indexes of a SQLite index file")
def test_indexes_missing_during_a_live_bulk_load_are_left_to_it(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _make_archive(root, 20)
    index_file = _index_file(root)
    with open_archive_index(str(root)) as index:
        sync_module.sync_archive(index)
    with sqlite3.connect(index_file) as connection:
        connection.execute("DROP INDEX ix_experiments_outcome")
    # This test process holds the lock, as a process in the middle of its bulk load does.
    lock = os.open(str(index_file) + LOCK_SUFFIX, os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open_archive_index(str(root)) as index:
            assert len(list(index.db.execute("SELECT rel_path FROM experiments"))) == 20  # still answers
        assert "ix_experiments_outcome" not in _experiment_indexes(index_file)
    finally:
        os.close(lock)
    with open_archive_index(str(root)):
        pass
    assert _experiment_indexes(index_file) == set(SECONDARY_INDEXES)


@pytest.mark.sqlite_only("the bulk load drops and builds the indexes of a SQLite index file")
def test_a_second_archive_in_the_same_index_file_keeps_the_indexes_while_it_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared.sqlite3"
    first, second = tmp_path / "a" / "results", tmp_path / "b" / "results"
    _make_archive(first, 10)
    _make_archive(second, 10)
    with open_archive_index(str(first), str(shared)) as index:
        sync_module.sync_archive(index)
    seen: list[set[str]] = []
    store = sync_module._store_verified

    def store_and_look(*args, **kwargs):
        seen.append(_experiment_indexes(shared))
        return store(*args, **kwargs)

    monkeypatch.setattr(sync_module, "_store_verified", store_and_look)
    with open_archive_index(str(second), str(shared)) as index:
        assert sync_module.sync_archive(index).added == 10
    assert seen and all(names == set(SECONDARY_INDEXES) for names in seen)


def test_a_first_build_without_a_progress_bar_walks_the_archive_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_backend: str
) -> None:
    root = tmp_path / "results"
    _make_archive(root, 30)
    walk = sync_module.iter_folder_listings
    walks: list[bool] = []

    def counted_walk(*args, **kwargs):
        walks.append(True)
        return walk(*args, **kwargs)

    monkeypatch.setattr(sync_module, "iter_folder_listings", counted_walk)
    with open_archive_index(str(root)) as index:
        assert sync_module.sync_archive(index).added == 30
    assert len(walks) == 1
    index_query(root, "DELETE FROM experiments WHERE archive_id = :archive_id")
    index_query(root, "DELETE FROM folder_digests WHERE archive_id = :archive_id")
    with open_archive_index(str(root)) as index:  # with a bar, a first build counts the archive first
        assert sync_module.sync_archive(index, on_progress=lambda done, total: None).added == 30
    assert len(walks) == 3
