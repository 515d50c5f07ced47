"""The watcher's full syncs in a child process (pycomex_index.sync_process): a real child, a real index."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

import pycomex_index.sync_process as sync_process
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from pycomex_index.sync_process import Stopping, SyncProcessError, full_sync, sync_in_child_process


def stored_rows(archive: Path, location: str | None = None) -> dict[str, tuple]:
    with open_archive_index(str(archive), location) as index:
        rows = index.db.execute(
            "SELECT rel_path, outcome, status, meta_mtime_ns, meta_size, asset_count, disk_usage FROM experiments "
            "WHERE archive_id = :archive_id",
            {"archive_id": index.archive_id},
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def index_of(archive: Path) -> tuple[str, str]:
    """The archive's root and index location, as the watcher passes them on."""
    with open_archive_index(str(archive)) as index:
        return index.root, index.location


def test_a_sync_in_a_child_process_stores_what_a_sync_here_stores(archive, tmp_path):
    root, location = index_of(archive)
    report = sync_in_child_process(root, location, lambda: False)
    assert (report.added, report.removed, report.unchanged) == (8, 0, 0)

    here = str(tmp_path / "synced-here.sqlite3")
    with open_archive_index(str(archive), here) as index:
        sync_archive(index)
    assert stored_rows(archive) == stored_rows(archive, here)
    again = sync_in_child_process(root, location, lambda: False)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 8)


def test_a_failed_sync_raises_its_error_here_and_logs_its_traceback_here(archive, tmp_path, caplog):
    unusable = tmp_path / "a-file"
    unusable.write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="pycomex_index"):
        with pytest.raises(SyncProcessError, match="cannot use the index .*: Not a directory"):
            sync_in_child_process(os.path.realpath(archive), str(unusable / "index.sqlite3"), lambda: False)
    (record,) = [record for record in caplog.records if record.name == "pycomex_index.sync_process"]
    assert record.levelno == logging.ERROR
    assert "Traceback" in record.getMessage() and "IndexUnavailableError" in record.getMessage()


def test_a_stop_ends_the_childs_sync_at_its_next_batch_boundary(archive, catch_up_gate, monkeypatch):
    monkeypatch.setattr(sync_process, "STOP_GRACE_SECONDS", 120.0)  # not terminated: it stops by itself
    gate = catch_up_gate
    root, location = index_of(archive)

    def stop_once_it_walks() -> bool:
        if not (gate / "blocked").exists():
            return False
        # Released once its stdin is closed (as this returns True): the walk goes on and stops at the first batch.
        # Released at once, a child on a busy machine could read that batch before its stdin thread saw the end.
        threading.Timer(0.5, (gate / "release").touch).start()
        return True

    started = time.monotonic()
    with pytest.raises(Stopping):
        sync_in_child_process(root, location, stop_once_it_walks)
    assert time.monotonic() - started < 60
    assert stored_rows(archive) == {}  # a first build stops before its first batch is read


def test_a_child_that_does_not_stop_in_time_is_terminated(archive, catch_up_gate, monkeypatch):
    monkeypatch.setattr(sync_process, "STOP_GRACE_SECONDS", 0.5)
    gate = catch_up_gate
    root, location = index_of(archive)
    started = time.monotonic()
    with pytest.raises(Stopping):
        sync_in_child_process(root, location, (gate / "blocked").exists)  # the gate is never released
    assert time.monotonic() - started < 30  # the gate holds the child for 60 s
    assert stored_rows(archive) == {}


def test_lines_the_child_prints_before_it_takes_its_stdout_over_are_logged_not_fatal(
    archive, tmp_path, monkeypatch, caplog
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('hello from sitecustomize')\nprint(1)  # JSON, but no message\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    root, location = index_of(archive)
    with caplog.at_level(logging.WARNING, logger="pycomex_index"):
        report = sync_in_child_process(root, location, lambda: False)
    assert report.added == 8
    assert "the sync process wrote: hello from sitecustomize" in caplog.messages
    assert "the sync process wrote: 1" in caplog.messages


@pytest.mark.parametrize("interpreter", ["/bin/true", "/no/such/python"])
def test_where_no_child_answers_full_syncs_run_in_this_process(archive, interpreter, monkeypatch, caplog):
    # A program embedding Python has a sys.executable that is no interpreter: its child says nothing, or none starts.
    monkeypatch.setattr(sync_process, "_children_answer", None)
    monkeypatch.setattr(sync_process.sys, "executable", interpreter)
    with pytest.raises(sync_process.SilentChild):
        sync_in_child_process(*index_of(archive), lambda: False)
    with open_archive_index(str(archive)) as index, caplog.at_level(logging.WARNING, logger="pycomex_index"):
        assert full_sync(index, lambda: False).added == 8
        assert full_sync(index, lambda: False).unchanged == 8  # no child is tried again, nor warned about
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "pycomex_index.sync_process"]
    assert "no sync process answered" in warning and "run in this process" in warning


def test_a_silent_child_after_children_answered_is_an_error_not_a_fallback(archive, monkeypatch):
    with open_archive_index(str(archive)) as index:
        monkeypatch.setattr(sync_process, "_children_answer", None)
        assert full_sync(index, lambda: False).added == 8  # a real child answers
        monkeypatch.setattr(sync_process.sys, "executable", "/bin/true")
        with pytest.raises(sync_process.SilentChild):
            full_sync(index, lambda: False)
