"""The watcher in this process, with a real inotify observer on real folders.

The index is read with ``peek_index`` while the watcher runs: opening it
through ``open_archive_index`` reads the file with ``open()``, and closing that
descriptor would drop the watcher's SQLite locks in this same process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycomex_index.db import SqlAlchemyDatabase, SqliteFileDatabase
from pycomex_index.heartbeat import has_fresh_watcher, read_watcher_state
from pycomex_index.paths import path_in_index
from pycomex_index.store import ArchiveIndex
from pycomex_index.watcher import ArchiveWatcher, WatchSettings, filesystem_type, is_network_filesystem

from .conftest import add_awkward_runs, make_metadata, peek_index

RUNNING_FIXTURE = "neural_net/26_11_2026__14_03_50__p11237__wKXG"
#: A finished run (so unwatched) of the fixture archive whose metadata says it failed.
FAILED_RUN = "debug_runs/26_11_2026__14_04_04__p11897__jETv"
#: Root, neural_net, sweep, sweep/lr, debug_runs, and the fixture's one run still marked running.
FIXTURE_WATCHES = 6


def write_run(folder: Path, status: str = "running", **overrides: Any) -> None:
    """Write experiment_meta.json the way pycomex does: the folder first, then the file in place, in pieces."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = make_metadata(status=status, **overrides)
    if status == "running":
        metadata.update(end_time=None, duration=0.0)
    text = json.dumps(metadata, indent=4, sort_keys=True)
    with open(folder / "experiment_meta.json", "w") as file:
        for start in range(0, len(text), 400):
            file.write(text[start : start + 400])
            file.flush()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class IndexReader:
    """Reads the archive's index without disturbing the watcher's connections (see ``peek_index``)."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive

    def outcomes(self) -> dict[str, str]:
        return {
            row["rel_path"]: row["outcome"]
            for row in peek_index(self.archive, "SELECT rel_path, outcome FROM experiments")
        }

    def row(self, rel_path: str) -> dict[str, Any] | None:
        rows = peek_index(self.archive, "SELECT * FROM experiments WHERE rel_path = :rel_path", {"rel_path": rel_path})
        return rows[0] if rows else None


@pytest.fixture
def start_watcher(archive: Path) -> Iterator[Callable[..., ArchiveWatcher]]:
    watchers: list[ArchiveWatcher] = []

    def start(**settings: Any) -> ArchiveWatcher:
        # The fixture's running run was written long ago: a day-old checkout would take it for interrupted.
        settings.setdefault("quiet_after", 1e9)
        watcher = ArchiveWatcher(str(archive), settings=WatchSettings(**settings))
        watcher.start()
        watchers.append(watcher)
        assert watcher.wait_ready(20), watcher.error
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop(30)


@pytest.fixture
def reader(archive: Path) -> IndexReader:
    return IndexReader(archive)


def test_watches_root_namespaces_and_running_runs_not_every_folder(archive, start_watcher, reader):
    for number in range(40):
        write_run(archive / "neural_net" / f"done_{number:02d}", status="done")
    watcher = start_watcher()
    status = watcher.status()
    assert status.mode == "inotify"
    assert status.watch_count == FIXTURE_WATCHES
    assert len(reader.outcomes()) == 48


def test_new_run_rewritten_done_is_indexed_with_its_final_status(archive, start_watcher, reader):
    watcher = start_watcher()
    run = archive / "neural_net" / "new_run"
    write_run(run, status="running")
    assert wait_until(lambda: reader.outcomes().get("neural_net/new_run") == "running")
    assert watcher.status().watch_count == FIXTURE_WATCHES + 1  # a running run is watched...
    write_run(run, status="done")
    assert wait_until(lambda: reader.outcomes().get("neural_net/new_run") == "done")
    assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES)  # ...until it finishes


def test_namespaces_made_with_mkdir_p_are_watched_for_later_runs(archive, start_watcher, reader):
    watcher = start_watcher()
    write_run(archive / "project" / "grid" / "lr_0.1" / "run_1", status="done")
    assert wait_until(lambda: "project/grid/lr_0.1/run_1" in reader.outcomes())
    write_run(archive / "project" / "grid" / "lr_0.1" / "run_2", status="done")
    assert wait_until(lambda: "project/grid/lr_0.1/run_2" in reader.outcomes())
    assert watcher.status().watch_count == FIXTURE_WATCHES + 3


def test_half_written_metadata_is_retried_not_indexed_as_corrupt(archive, start_watcher, reader):
    start_watcher()
    run = archive / "neural_net" / "slow_writer"
    run.mkdir()
    text = json.dumps(make_metadata(status="done"), indent=4, sort_keys=True)
    (run / "experiment_meta.json").write_text(text[: len(text) // 2])
    time.sleep(1.0)  # well past the settle time: the watcher has looked at the half file
    assert "neural_net/slow_writer" not in reader.outcomes()
    (run / "experiment_meta.json").write_text(text)
    assert wait_until(lambda: reader.outcomes().get("neural_net/slow_writer") == "done")


def test_metadata_broken_for_good_is_indexed_as_a_metadata_error(archive, start_watcher, reader):
    start_watcher()
    run = archive / "neural_net" / "broken"
    run.mkdir()
    meta = run / "experiment_meta.json"
    meta.write_text('{"status": "done", ')
    long_ago = time.time() - 60
    os.utime(meta, (long_ago, long_ago))
    assert wait_until(lambda: reader.outcomes().get("neural_net/broken") == "error")


def test_moves_and_renames_follow_folders_and_their_watches(archive, start_watcher, reader):
    watcher = start_watcher()
    source = "neural_net/26_11_2026__14_03_22__p10123__h5wO"
    os.rename(archive / source, archive / "debug_runs" / "moved_run")
    assert wait_until(lambda: "debug_runs/moved_run" in reader.outcomes() and source not in reader.outcomes())
    before = {path for path in reader.outcomes() if path.startswith("sweep/")}
    os.rename(archive / "sweep", archive / "sweep2")
    expected = {"sweep2/" + path[len("sweep/") :] for path in before}
    assert wait_until(lambda: {path for path in reader.outcomes() if path.startswith("sweep")} == expected)
    write_run(archive / "sweep2" / "lr" / "after_rename", status="done")
    assert wait_until(lambda: "sweep2/lr/after_rename" in reader.outcomes())
    assert watcher.status().watch_count == FIXTURE_WATCHES


def test_deleting_a_namespace_drops_its_runs_and_watches(archive, start_watcher, reader):
    watcher = start_watcher()
    write_run(archive / "sweep" / "lr" / "live", status="running")
    assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES + 1)
    shutil.rmtree(archive / "sweep")
    assert wait_until(lambda: not any(path.startswith("sweep/") for path in reader.outcomes()))
    assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES - 2)


def test_assets_written_by_a_running_run_update_its_disk_usage(archive, start_watcher, reader):
    start_watcher()
    before = reader.row(RUNNING_FIXTURE)
    (archive / RUNNING_FIXTURE / "checkpoint.bin").write_bytes(b"\0" * 50_000)
    assert wait_until(lambda: reader.row(RUNNING_FIXTURE)["asset_count"] == before["asset_count"] + 1)
    assert reader.row(RUNNING_FIXTURE)["disk_usage"] == before["disk_usage"] + 50_000
    # Judging whether the run still runs reads the folder's time from the index while a watcher vouches for it.
    assert reader.row(RUNNING_FIXTURE)["folder_mtime_ns"] == os.stat(archive / RUNNING_FIXTURE).st_mtime_ns


def test_a_file_added_to_a_polled_running_run_reaches_the_index_folder_time(archive, start_watcher, reader):
    write_run(archive / "neural_net" / "polled", status="running")
    watcher = start_watcher(max_watches=FIXTURE_WATCHES, poll_interval=0.2)
    assert "1 more running experiments polled every 0.2 s" in watcher.status().note
    folder = archive / "neural_net" / "polled"
    before = reader.row("neural_net/polled")["folder_mtime_ns"]
    time.sleep(0.01)  # a folder time that can differ from the one the catch-up stored
    (folder / "checkpoint.bin").write_bytes(b"\0" * 10)
    assert os.stat(folder).st_mtime_ns != before
    assert wait_until(lambda: reader.row("neural_net/polled")["folder_mtime_ns"] == os.stat(folder).st_mtime_ns)


def _edit_failed_run_to_done(archive: Path) -> str:
    """Rewrite :data:`FAILED_RUN`'s metadata as done, an edit no watch sees (finished runs are not watched)."""
    metadata = json.loads((archive / FAILED_RUN / "experiment_meta.json").read_text())
    metadata["has_error"], metadata["status"] = False, "done"
    (archive / FAILED_RUN / "experiment_meta.json").write_text(json.dumps(metadata, indent=4, sort_keys=True))
    return FAILED_RUN


def test_edits_to_finished_runs_are_caught_by_the_periodic_rewalk(archive, start_watcher, reader, monkeypatch):
    import pycomex_index.watcher.core as core_module

    # The interval alone: 200 times a catch-up of 0.03 s (PostgreSQL) would outlast the wait below.
    monkeypatch.setattr(core_module, "REWALK_DUTY_FACTOR", 0.0)
    start_watcher(reconcile_interval=0.3)
    finished = _edit_failed_run_to_done(archive)
    assert wait_until(lambda: reader.outcomes()[finished] == "done")


def test_periodic_rewalks_wait_in_proportion_to_how_long_the_last_sync_took(
    archive, start_watcher, reader, monkeypatch
):
    import pycomex_index.watcher.core as core_module

    # As if the catch-up had taken long (a huge archive): the 0.3 s interval gives way to the duty factor.
    monkeypatch.setattr(core_module, "REWALK_DUTY_FACTOR", 1e9)
    watcher = start_watcher(reconcile_interval=0.3)
    finished = _edit_failed_run_to_done(archive)
    assert not wait_until(lambda: reader.outcomes()[finished] == "done", timeout=2)
    watcher._reconciler.request("asked for")  # a re-walk asked for (events lost) does not wait
    assert wait_until(lambda: reader.outcomes()[finished] == "done")


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_heartbeat_vouches_while_running_and_is_cleared_on_stop(archive, start_watcher, polling):
    watcher = start_watcher(polling=polling, poll_interval=0.2)
    # Not open_archive_index (see the module's docstring); the index's one archive has the first id.
    url = os.environ.get("PYCOMEX_INDEX")
    db = SqlAlchemyDatabase(url) if url else SqliteFileDatabase(str(archive / ".pycomex_index" / "index.sqlite3"))
    index = ArchiveIndex(db=db, root=str(archive), archive_id=1, location="")
    try:
        assert wait_until(lambda: has_fresh_watcher(index))
        assert read_watcher_state(index).mode == ("polling" if polling else "inotify")
        watcher.stop(30)
        assert read_watcher_state(index) is None
        assert not has_fresh_watcher(index)
    finally:
        index.close()


def test_watch_limit_hit_while_running_switches_to_polling_and_misses_nothing(archive, start_watcher, reader):
    watcher = start_watcher(max_watches=FIXTURE_WATCHES + 1, poll_interval=0.2)
    assert watcher.status().mode == "inotify"
    for name in ("alpha", "beta", "gamma"):
        write_run(archive / name / "run", status="done")
    assert wait_until(lambda: {"alpha/run", "beta/run", "gamma/run"} <= reader.outcomes().keys())
    status = watcher.status()
    assert status.mode == "polling"
    assert f"more than {FIXTURE_WATCHES + 1} inotify watches" in status.note
    write_run(archive / "gamma" / "later", status="done")
    shutil.rmtree(archive / "alpha")
    assert wait_until(lambda: "gamma/later" in reader.outcomes() and "alpha/run" not in reader.outcomes())


def test_running_runs_past_the_watch_budget_are_polled_not_missed(archive, start_watcher, reader):
    # Killed runs stay "running" forever: many of them must not push the whole archive into polling.
    for number in range(6):
        write_run(archive / "neural_net" / f"killed_{number}", status="running")
    watcher = start_watcher(max_watches=FIXTURE_WATCHES + 1, poll_interval=0.2)
    status = watcher.status()
    assert status.mode == "inotify"
    assert status.watch_count == FIXTURE_WATCHES + 1
    assert "more running experiments polled every 0.2 s" in status.note
    for number in range(6):
        write_run(archive / "neural_net" / f"killed_{number}", status="done")
    assert wait_until(
        lambda: all(reader.outcomes().get(f"neural_net/killed_{number}") == "done" for number in range(6)), timeout=3
    )
    write_run(archive / "neural_net" / "new_run", status="done")  # namespaces are still watched by inotify
    assert wait_until(lambda: reader.outcomes().get("neural_net/new_run") == "done", timeout=2)
    assert watcher.status().mode == "inotify"


def test_many_polled_running_runs_are_polled_round_robin_at_a_bounded_rate(archive, start_watcher, reader, monkeypatch):
    # 46,000 killed runs polled every 2 s took a third of a core: the polling rate is capped instead,
    # and every run is still seen, a slice per interval.
    import pycomex_index.watcher.watches as watches_module

    monkeypatch.setattr(watches_module, "POLLED_EXPERIMENTS_PER_SECOND", 10)  # 2 per 0.2 s interval
    for number in range(8):
        write_run(archive / "neural_net" / f"killed_{number}", status="running")
    watcher = start_watcher(max_watches=FIXTURE_WATCHES, poll_interval=0.2)
    assert "8 more running experiments polled every 0.8 s" in watcher.status().note
    for number in range(8):
        write_run(archive / "neural_net" / f"killed_{number}", status="done")
    assert wait_until(
        lambda: all(reader.outcomes().get(f"neural_net/killed_{number}") == "done" for number in range(8)), timeout=5
    )


def test_running_runs_unchanged_for_quiet_after_are_polled_rarely_not_watched(
    archive, start_watcher, reader, monkeypatch
):
    # Killed runs stay "running" forever; one unchanged for quiet_after is taken for interrupted.
    import pycomex_index.watcher.watches as watches_module

    monkeypatch.setattr(watches_module, "QUIET_POLL_SECONDS", 0.4)
    long_ago = time.time() - 7200
    for number in range(3):
        write_run(archive / "neural_net" / f"killed_{number}", status="running")
        for path in (
            archive / "neural_net" / f"killed_{number}" / "experiment_meta.json",
            archive / "neural_net" / f"killed_{number}",
        ):
            os.utime(path, (long_ago, long_ago))
    os.utime(archive / RUNNING_FIXTURE / "experiment_meta.json")  # alive: written just now
    watcher = start_watcher(quiet_after=3600, poll_interval=0.2)
    status = watcher.status()
    assert status.watch_count == FIXTURE_WATCHES  # the fixture's live run is watched, the killed ones are not
    assert "3 running experiments unchanged for 3600 s (taken for interrupted) polled every 0.4 s" in status.note
    write_run(archive / "neural_net" / "killed_1", status="done")  # it was only quiet after all
    assert wait_until(lambda: reader.outcomes().get("neural_net/killed_1") == "done", timeout=3)
    write_run(archive / "neural_net" / "killed_2", status="running")  # it came back to life: watched again
    # The count and the note are updated one after the other: wait for both.
    assert wait_until(
        lambda: (
            watcher.status().watch_count == FIXTURE_WATCHES + 1
            and "1 running experiments unchanged" in watcher.status().note
        ),
        timeout=3,
    )


def test_a_watched_run_that_goes_quiet_is_retired_to_rare_polling(archive, start_watcher, reader, monkeypatch):
    import pycomex_index.watcher.watches as watches_module

    monkeypatch.setattr(watches_module, "QUIET_POLL_SECONDS", 0.2)
    write_run(archive / "neural_net" / "silent", status="running")
    os.utime(archive / RUNNING_FIXTURE / "experiment_meta.json")
    watcher = start_watcher(quiet_after=2, poll_interval=0.1)
    assert watcher.status().watch_count == FIXTURE_WATCHES + 1
    assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES - 1, timeout=5)  # both runs retired
    write_run(archive / "neural_net" / "silent", status="done")
    assert wait_until(lambda: reader.outcomes().get("neural_net/silent") == "done", timeout=3)


def test_every_watch_shares_one_reader_thread(archive, start_watcher):
    for number in range(30):
        write_run(archive / "neural_net" / f"running_{number:02d}", status="running")
    threads_before = {thread.name for thread in threading.enumerate()}
    watcher = start_watcher()
    assert watcher.status().watch_count == FIXTURE_WATCHES + 30
    new_threads = sorted({thread.name for thread in threading.enumerate()} - threads_before)
    # One thread reads every watch; the lease keeper is one per watcher, not per watch.
    assert new_threads == ["pycomex-index-inotify", "pycomex-index-lease", "pycomex-index-watcher"]


def test_set_up_does_not_stat_the_runs_the_catch_up_walk_just_indexed(archive, start_watcher, monkeypatch):
    import pycomex_index.watcher.watches as watches_module

    for number in range(40):
        write_run(archive / "neural_net" / f"done_{number:02d}", status="done")
    statted: list[str] = []
    original = watches_module.stat_experiment_folder
    monkeypatch.setattr(
        watches_module, "stat_experiment_folder", lambda root, rel: statted.append(rel) or original(root, rel)
    )
    start_watcher()
    assert not [rel for rel in statted if "/done_" in rel]


def test_runs_created_and_deleted_during_the_catch_up_walk_are_indexed_before_ready(
    archive, start_watcher, reader, monkeypatch
):
    # Namespaces are watched only after the walk: what changed in between must not wait for an event.
    original = ArchiveWatcher._catch_up

    def catch_up_then_change_the_archive(self):
        original(self)
        write_run(archive / "neural_net" / "created_after_the_walk", status="done")
        write_run(archive / "brand_new" / "deep" / "run", status="done")
        shutil.rmtree(archive / "debug_runs")

    monkeypatch.setattr(ArchiveWatcher, "_catch_up", catch_up_then_change_the_archive)
    start_watcher()
    outcomes = reader.outcomes()  # at once: ready means the index already shows it
    assert outcomes.get("neural_net/created_after_the_walk") == "done"
    assert outcomes.get("brand_new/deep/run") == "done"
    assert not [rel for rel in outcomes if rel.startswith("debug_runs/")]


def test_watch_once_catches_up_and_exits(archive, run_cli):
    result = run_cli("watch", "--once", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert "8 added" in result.output
    result = run_cli("watch", "--once", "--path", str(archive))
    assert "0 added" in result.output and "8 unchanged" in result.output


def test_local_disk_is_not_taken_for_a_network_filesystem(tmp_path):
    assert filesystem_type(str(tmp_path))
    assert not is_network_filesystem(str(tmp_path))


@pytest.mark.sqlite_only("deletes the SQLite index file under the watcher")
def test_watcher_stops_when_its_index_is_deleted_under_it(archive, start_watcher):
    watcher = start_watcher()
    shutil.rmtree(archive / ".pycomex_index")
    assert wait_until(lambda: not watcher.is_alive(), timeout=5)
    assert watcher.error is None


#: Folder names that are not plain text: bytes that are not UTF-8, a backslash (stored doubled), one
#: that looks like an escape, and a namespace whose name holds such a byte.
ODD_RUNS = [b"neural_net/run-\xff", b"neural_net/run\\x", b"neural_net/lookalike-\\xff", b"odd-\xfe/deep\\er/run-\xfa"]


def _write_odd_run(archive: Path, rel: bytes, status: str) -> None:
    folder = os.path.join(os.fsencode(archive), rel)
    os.makedirs(folder, exist_ok=True)
    metadata = make_metadata(status=status, parameters={"X": 1})
    if status == "running":
        metadata.update(end_time=None, duration=0.0)
    with open(os.path.join(folder, b"experiment_meta.json"), "w") as file:
        json.dump(metadata, file, indent=4, sort_keys=True)


def _rows_as_sync_stores_them(archive: Path, tmp_path: Path) -> dict[str, tuple]:
    """What ``index sync`` stores for the archive, in an index of its own (the watcher's is left alone)."""
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import sync_archive

    with open_archive_index(str(archive), str(tmp_path / "by-sync.sqlite3")) as index:
        sync_archive(index)
        return {row[0]: tuple(row[1:]) for row in index.db.execute(f"SELECT {_COMPARED_COLUMNS} FROM experiments")}


_COMPARED_COLUMNS = "rel_path, namespace, name, outcome, status, asset_count, disk_usage, meta_mtime_ns, meta_size"


class _Complaints(logging.Handler):
    """Every warning or error the watcher logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def complaints() -> Iterator[list[str]]:
    handler = _Complaints()
    watcher_logger = logging.getLogger("pycomex_index.watcher")
    watcher_logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        watcher_logger.removeHandler(handler)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_runs_in_folders_named_with_odd_bytes_are_indexed_as_sync_stores_them(
    archive, start_watcher, reader, tmp_path, complaints, polling
):
    stored = {rel: path_in_index(os.fsdecode(rel)) for rel in ODD_RUNS}
    assert stored[b"neural_net/run\\x"] == "neural_net/run\\\\x"
    _write_odd_run(archive, b"neural_net/there-before-start-\xfb", "running")
    watcher = start_watcher(polling=polling, poll_interval=0.2)

    def indexed_as_sync_would() -> bool:
        rows = [tuple(row.values()) for row in peek_index(archive, f"SELECT {_COMPARED_COLUMNS} FROM experiments")]
        return {row[0]: tuple(row[1:]) for row in rows} == _rows_as_sync_stores_them(archive, tmp_path)

    for rel in ODD_RUNS:
        _write_odd_run(archive, rel, "running")
    assert wait_until(lambda: all(reader.outcomes().get(path) == "running" for path in stored.values()))
    assert wait_until(indexed_as_sync_would)
    if not polling:
        assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES + 1 + 2 + 4)  # runs, odd-\xfe/deep\er
    time.sleep(0.3)
    for rel in ODD_RUNS:
        _write_odd_run(archive, rel, "done")
    assert wait_until(lambda: all(reader.outcomes().get(path) == "done" for path in stored.values()))
    assert wait_until(indexed_as_sync_would)
    if not polling:
        assert wait_until(lambda: watcher.status().watch_count == FIXTURE_WATCHES + 1 + 2)
    for rel in ODD_RUNS:
        shutil.rmtree(os.path.join(os.fsencode(archive), rel))
    shutil.rmtree(os.path.join(os.fsencode(archive), b"odd-\xfe"))
    assert wait_until(lambda: not set(stored.values()) & set(reader.outcomes()))
    assert wait_until(indexed_as_sync_would)
    assert watcher.is_alive() and watcher.error is None
    assert complaints == []


def test_a_moved_folder_takes_its_runs_and_leaves_its_punctuation_siblings(archive, start_watcher, reader):
    # Under a non-C collation "exp/run#2" and "exp/run+lr" sort between "exp/run/" and "exp/run0" (issue 12).
    runs = add_awkward_runs(archive)
    start_watcher()
    (archive / "exp" / "run").rename(archive / "exp" / "moved")
    expected = (set(runs) - {"exp/run/a", "exp/run/b"}) | {"exp/moved/a", "exp/moved/b"}
    assert wait_until(lambda: {rel for rel in reader.outcomes() if rel.startswith("exp/")} == expected)
