"""What the watcher relies on in watchdog beyond its documented API: these fail when watchdog changes it.

- ``BaseObserver._emitter_for_watch`` (private) maps a scheduled watch to its
  emitter, whose ``stopped_event`` watchdog sets when the watched folder is
  deleted: that is how a dead watch is told from a live one.
- A kernel queue overflow (``IN_Q_OVERFLOW``) reaches us only as a warning on
  the ``watchdog.observers.inotify_c`` logger. ``tests/test_daemon.py``
  reproduces a real overflow end to end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pycomex_index.watcher.changes import ChangeQueue
from pycomex_index.watcher.watches import NAMESPACE, OVERFLOW_LOGGER_NAME, OverflowListener, WatchSet, emitter_for

from .test_watcher import wait_until


@pytest.fixture
def observer():
    from watchdog.observers.inotify import InotifyObserver

    observer = InotifyObserver()
    observer.start()
    yield observer
    observer.stop()
    observer.join(10)


def test_the_observer_maps_a_scheduled_watch_to_its_emitter(observer, tmp_path: Path):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.api import EventEmitter

    observed = observer.schedule(FileSystemEventHandler(), str(tmp_path), recursive=False)
    assert isinstance(observer._emitter_for_watch, dict)
    emitter = emitter_for(observer, observed)
    assert isinstance(emitter, EventEmitter)
    assert emitter in observer.emitters and emitter.watch == observed
    assert not emitter.stopped_event.is_set()


def test_deleting_a_watched_folder_stops_its_emitter_and_the_watch_set_forgets_it(tmp_path: Path):
    (tmp_path / "namespace").mkdir()
    watches = WatchSet(ChangeQueue(), limit=10, poll_interval=1.0, on_overflow=lambda: None)
    watches.root, watches.real_root = str(tmp_path), os.path.realpath(tmp_path)
    watches.start()
    try:
        assert watches.watch("namespace", NAMESPACE)
        emitter = watches._watches["namespace"].emitter
        assert emitter is not None and watches.kind("namespace") == NAMESPACE
        (tmp_path / "namespace").rmdir()
        assert wait_until(emitter.stopped_event.is_set)
        assert watches.kind("namespace") is None and watches.count() == 0
    finally:
        watches.stop()


def test_a_queue_overflow_is_a_warning_on_the_logger_the_watcher_listens_to():
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD

    # What the kernel sends on overflow: no watch (wd -1), IN_Q_OVERFLOW, no name.
    event = InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    assert event.is_queue_overflow
    overflows = []
    listener = OverflowListener(lambda: overflows.append(True))
    logging.getLogger(OVERFLOW_LOGGER_NAME).addHandler(listener)
    inotify = InotifyFD()
    inotify.start()
    try:
        inotify.handle_event(event)
    finally:
        logging.getLogger(OVERFLOW_LOGGER_NAME).removeHandler(listener)
        inotify.stop()
        inotify.join(10)
    assert overflows == [True]
