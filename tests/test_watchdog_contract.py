"""What the watcher relies on in watchdog beyond its observer API: these fail when watchdog changes it.

The watcher drives watchdog's ``InotifyFD`` (``watchdog.observers.inotify_c``)
directly: one inotify file descriptor, one reader thread, every watch on it,
with one callback object implementing watchdog's ``WatchCallback`` protocol.
That class is what watchdog's own observer is built on, but it is not in
watchdog's documented API, so what the watcher uses of it is pinned here:

- ``InotifyFD()`` makes an independent descriptor (not the shared
  ``get_instance()``); it is a thread, started with ``start()`` and ended with
  ``stop()`` then ``join()``, which also removes its watches;
- ``add_callback(path: bytes, mask, callback, id)`` returns the watch
  descriptor, the same one for the same folder; refusals raise ``OSError``
  with the kernel's errno, except ``EACCES``, which hands back -1;
- ``remove_callbacks([(wd, id)])`` ends a watch and tolerates one the kernel
  already ended;
- the reader calls ``on_event(event)`` with ``event.wd`` and ``event.name``
  (bytes), ``on_watch_deleted(wd)`` when the kernel ends a watch (its folder
  was deleted), and ``on_queue_overflow()`` on ``IN_Q_OVERFLOW``;
- ``InotifyConstants`` holds the event flags. ``tests/test_daemon.py``
  reproduces a real overflow end to end.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyConstants

from pycomex_index.watcher.changes import ChangeQueue
from pycomex_index.watcher.watches import NAMESPACE, RECORDER_ID, WatchSet, event_mask

from .test_watcher import wait_until


class Recorder:
    """A minimal ``WatchCallback``: what the reader thread calls, and on which thread."""

    def __init__(self) -> None:
        self.events: list[tuple[int, bytes]] = []
        self.deleted: list[int] = []
        self.overflows = 0
        self.threads: set[str] = set()

    def on_event(self, event) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append((event.wd, event.name))

    def on_watch_deleted(self, wd) -> None:
        self.deleted.append(wd)

    def on_queue_overflow(self) -> None:
        self.overflows += 1


@pytest.fixture
def inotify():
    from watchdog.observers.inotify_c import InotifyFD

    reader = InotifyFD()
    reader.start()
    yield reader
    reader.stop()
    reader.join(10)
    assert not reader.is_alive()


def test_one_reader_thread_reports_events_of_many_watches_with_their_descriptor_and_name(inotify, tmp_path: Path):
    recorder = Recorder()
    folders = [tmp_path / f"folder_{number}" for number in range(20)]
    descriptors = {}
    threads_before = threading.active_count()
    for folder in folders:
        folder.mkdir()
        descriptors[folder.name] = inotify.add_callback(os.fsencode(folder), event_mask(), recorder, RECORDER_ID)
    assert threading.active_count() == threads_before  # watches add no thread
    assert len(set(descriptors.values())) == len(folders) and all(wd >= 0 for wd in descriptors.values())
    # The same folder again: the same descriptor.
    assert (
        inotify.add_callback(os.fsencode(folders[0]), event_mask(), recorder, RECORDER_ID + 1)
        == descriptors["folder_0"]
    )
    inotify.remove_callbacks([(descriptors["folder_0"], RECORDER_ID + 1)])
    for folder in folders:
        (folder / "experiment_meta.json").write_text("{}")
    expected = {(descriptors[folder.name], b"experiment_meta.json") for folder in folders}
    assert wait_until(lambda: expected <= set(recorder.events))
    assert recorder.threads == {inotify.name}


def test_the_mask_reports_creations_writes_deletions_and_moves_not_opens(inotify, tmp_path: Path):
    recorder = Recorder()
    wd = inotify.add_callback(os.fsencode(tmp_path), event_mask(), recorder, RECORDER_ID)
    (tmp_path / "a").write_text("x")  # create, modify
    (tmp_path / "a").read_text()  # open, close-nowrite: not asked for
    os.rename(tmp_path / "a", tmp_path / "b")  # moved from, moved to
    os.unlink(tmp_path / "b")  # delete
    (tmp_path / "marker").mkdir()
    assert wait_until(lambda: (wd, b"marker") in recorder.events)
    names = [name for _, name in recorder.events]
    assert names[0] == b"a" and b"b" in names and names.count(b"b") >= 2
    # Reading "a" raised nothing: the mask leaves out what floods the kernel queue on a large archive.
    assert not event_mask() & (
        InotifyConstants.IN_OPEN | InotifyConstants.IN_ACCESS | InotifyConstants.IN_CLOSE_NOWRITE
    )


def test_refusals_raise_the_kernels_errno(inotify, tmp_path: Path):
    recorder = Recorder()
    with pytest.raises(OSError) as raised:
        inotify.add_callback(os.fsencode(tmp_path / "missing"), event_mask(), recorder, RECORDER_ID)
    assert raised.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as raised:
        inotify.add_callback(os.fsencode(tmp_path / "file"), event_mask(), recorder, RECORDER_ID)
    assert raised.value.errno == errno.ENOTDIR  # IN_ONLYDIR


def test_a_deleted_folder_ends_its_watch_and_removing_it_afterwards_is_harmless(inotify, tmp_path: Path):
    recorder = Recorder()
    (tmp_path / "namespace").mkdir()
    wd = inotify.add_callback(os.fsencode(tmp_path / "namespace"), event_mask(), recorder, RECORDER_ID)
    (tmp_path / "namespace").rmdir()
    assert wait_until(lambda: recorder.deleted == [wd])
    inotify.remove_callbacks([(wd, RECORDER_ID)])


def test_deleting_a_watched_folder_is_noticed_and_the_watch_set_forgets_it(tmp_path: Path):
    (tmp_path / "namespace").mkdir()
    watches = WatchSet(ChangeQueue(), limit=10, poll_interval=1.0, on_overflow=lambda: None)
    watches.root, watches.real_root = str(tmp_path), os.path.realpath(tmp_path)
    watches.start()
    try:
        assert watches.watch("namespace", NAMESPACE)
        assert watches.kind("namespace") == NAMESPACE
        (tmp_path / "namespace").rmdir()
        assert wait_until(lambda: watches.kind("namespace") is None)
        assert watches.count() == 0
    finally:
        watches.stop()


def test_a_queue_overflow_calls_the_callback_once_whatever_the_number_of_watches(inotify, tmp_path: Path):
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    recorder = Recorder()
    for number in range(3):
        (tmp_path / str(number)).mkdir()
        inotify.add_callback(os.fsencode(tmp_path / str(number)), event_mask(), recorder, RECORDER_ID)
    # What the kernel sends on overflow: no watch (wd -1), IN_Q_OVERFLOW, no name.
    event = InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    assert event.is_queue_overflow
    inotify.handle_event(event)
    assert recorder.overflows == 1
