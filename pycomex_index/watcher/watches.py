"""The watch set: which folders inotify watches, within a budget, and the running runs polled past it.

One non-recursive watch on the archive root and on every namespace folder
(new, deleted and moved experiment folders appear there) plus one on each
experiment whose status is ``running`` (pycomex rewrites its metadata at the
end). Running experiments that do not fit the budget are stat-polled,
round-robin, at a bounded rate. watchdog is imported only when the observer
starts.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from pycomex_index.discovery import INDEX_FOLDER_NAME, stat_experiment_folder
from pycomex_index.watcher.changes import ChangeQueue
from pycomex_index.watcher.system import MAX_WATCHES_ENV_VARIABLE, is_alias

logger = logging.getLogger("pycomex_index.watcher")

NAMESPACE = "namespace"
EXPERIMENT = "experiment"
#: Running experiments past the watch budget are stat-polled round-robin at most this fast (~3% of a core):
#: killed runs stay "running" forever, and 46,000 of them polled every 2 s took a third of a core.
POLLED_EXPERIMENTS_PER_SECOND = 2000
#: The logger watchdog reports a kernel queue overflow on (see :class:`OverflowListener`).
OVERFLOW_LOGGER_NAME = "watchdog.observers.inotify_c"


class WatchLimitReached(Exception):
    """More folders need watching than the limit allows (or inotify cannot work): the watcher polls."""


class EventRecorder:
    """The observer's handler: records which paths changed, nothing else (the worker does the work)."""

    def __init__(self, root: str, queue: ChangeQueue) -> None:
        self._root = root
        self._prefix = root + os.sep
        self._queue = queue

    def dispatch(self, event: Any) -> None:
        paths = [event.src_path]
        dest_path = getattr(event, "dest_path", "")
        if dest_path:
            paths.append(dest_path)
        rels = []
        for path in map(os.fsdecode, paths):
            if path == self._root:
                rels.append("")
            elif path.startswith(self._prefix):
                rels.append(path[len(self._prefix) :])
        self._queue.add_paths(rels)


class OverflowListener(logging.Handler):
    """watchdog reports a kernel queue overflow (``IN_Q_OVERFLOW``) only as a warning on its
    ``inotify_c`` logger; this turns that warning into a call. The message is pinned by
    ``tests/test_watchdog_contract.py`` and a real overflow by ``tests/test_daemon.py``."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


def emitter_for(observer: Any, observed: Any) -> Any:
    """watchdog's emitter (one thread) for a scheduled watch, None if it cannot be found.

    Only ``BaseObserver._emitter_for_watch`` (private) maps a watch to its
    emitter; scanning the public ``observer.emitters`` per watch would make
    scheduling quadratic. ``tests/test_watchdog_contract.py`` fails when it changes.
    """
    emitters = getattr(observer, "_emitter_for_watch", None)
    if emitters is None:
        logger.warning("watchdog has no _emitter_for_watch: watches of deleted folders are noticed later")
        return None
    return emitters.get(observed)


@dataclass
class _Watch:
    """One scheduled watch: watchdog's handle, what the folder is, and the folder's identity."""

    observed: Any
    kind: str
    identity: tuple[int, int]
    emitter: Any

    def is_dead(self) -> bool:
        # watchdog stops a watch's emitter by itself when the watched folder is deleted.
        return self.emitter is not None and self.emitter.stopped_event.is_set()


class WatchSet:
    """Every inotify watch the watcher holds, and the running experiments polled instead.

    Used by the worker thread only, except :meth:`count`. ``root`` and
    ``real_root`` are set by the worker before :meth:`start`.
    """

    def __init__(
        self, queue: ChangeQueue, *, limit: int, poll_interval: float, on_overflow: Callable[[], None]
    ) -> None:
        self.root = ""
        self.real_root = ""
        self.limit = limit
        self.poll_interval = poll_interval
        self._queue = queue
        self._on_overflow = on_overflow
        self._observer: Any = None
        self._recorder: EventRecorder | None = None
        self._overflow_listener: OverflowListener | None = None
        # Must be held when changing _watches, and when reading it from another thread (count()).
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._watched_ids: dict[tuple[int, int], str] = {}
        # Running experiments past the watch budget: rel_path -> (meta mtime, size, folder mtime) last seen.
        self._polled: dict[str, tuple[int, int, int] | None] = {}
        self._poll_queue: collections.deque[str] = collections.deque()  # round-robin order of the above
        self._next_poll = 0.0

    @property
    def active(self) -> bool:
        """True while inotify watches (the observer runs); False when polling or not started."""
        return self._observer is not None

    def count(self) -> int:
        with self._lock:
            return len(self._watches)

    # ------------------------------------------------------------ observer

    def start(self) -> None:
        """Start the observer; raises WatchLimitReached when inotify is not available."""
        try:
            from watchdog.observers.inotify import InotifyObserver
        except Exception as error:  # noqa: BLE001 - not Linux, or no inotify: poll
            raise WatchLimitReached(f"inotify is not available ({error})") from None
        try:
            self._observer = InotifyObserver()
        except OSError as error:
            raise WatchLimitReached(f"inotify is not available ({error.strerror or error})") from None
        self._observer.start()
        self._recorder = EventRecorder(self.root, self._queue)
        self._overflow_listener = OverflowListener(self._on_overflow)
        logging.getLogger(OVERFLOW_LOGGER_NAME).addHandler(self._overflow_listener)

    def stop(self) -> None:
        """Drop every watch and stop the observer (the polled experiments are kept)."""
        observer, self._observer = self._observer, None
        with self._lock:
            self._watches.clear()
        self._watched_ids.clear()
        if self._overflow_listener is not None:
            logging.getLogger(OVERFLOW_LOGGER_NAME).removeHandler(self._overflow_listener)
            self._overflow_listener = None
        if observer is not None:
            try:
                observer.stop()
                observer.join(10)
            except Exception:  # noqa: BLE001
                logger.exception("could not stop the observer cleanly")

    # ------------------------------------------------------------- watches

    def kind(self, rel: str) -> str | None:
        """What a watched folder is (namespace or experiment), None when unwatched; forgets dead watches."""
        watch = self._watches.get(rel)
        if watch is None:
            return None
        if watch.is_dead():
            self.unwatch(rel)
            return None
        return watch.kind

    def scheduled_kind(self, rel: str) -> str | None:
        """What a folder was watched as, dead watch or not (an event from it names the folder)."""
        watch = self._watches.get(rel)
        return None if watch is None else watch.kind

    def is_polled(self, rel: str) -> bool:
        return rel in self._polled

    def watch(self, rel: str, kind: str) -> bool:
        """Watch a folder non-recursively; False when it vanished. Raises WatchLimitReached."""
        if self.kind(rel) is not None:
            self._watches[rel].kind = kind
            return True
        if len(self._watches) >= self.limit:
            raise WatchLimitReached(
                f"the archive needs more than {self.limit} inotify watches (one per namespace folder "
                f"and running experiment); set {MAX_WATCHES_ENV_VARIABLE} or raise fs.inotify.max_user_watches"
            )
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )

        folder = os.path.join(self.root, rel) if rel else self.root
        try:
            folder_stat = os.stat(folder)
            observed = self._observer.schedule(
                self._recorder,
                folder,
                recursive=False,
                # Only these: the default mask also asks for open/close events, which flood
                # the kernel queue on a large archive (see DESIGN.md, "Measured").
                event_filter=[
                    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent,
                    DirDeletedEvent, FileMovedEvent, DirMovedEvent,
                ],
                follow_symlink=True,
            )
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise WatchLimitReached(
                    f"the system refused another inotify watch after {len(self._watches)} ({error.strerror or error})"
                ) from None
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            logger.warning("cannot watch %s: %s", folder, error.strerror or error)
            return False
        identity = (folder_stat.st_dev, folder_stat.st_ino)
        with self._lock:
            self._watches[rel] = _Watch(observed, kind, identity, emitter_for(self._observer, observed))
        self._watched_ids[identity] = rel
        return True

    def unwatch(self, rel: str) -> None:
        self._polled.pop(rel, None)
        with self._lock:
            watch = self._watches.pop(rel, None)
        if watch is None:
            return
        if self._watched_ids.get(watch.identity) == rel:
            del self._watched_ids[watch.identity]
        try:
            self._observer.unschedule(watch.observed)
        except (KeyError, RuntimeError):
            pass  # already gone with its folder

    def unwatch_below(self, rel: str, *, including: bool = True) -> None:
        prefix = rel + "/"
        for watched in [path for path in self._watches if path.startswith(prefix) or (including and path == rel)]:
            self.unwatch(watched)

    def watched_elsewhere(self, identity: tuple[int, int], rel: str) -> bool:
        """True when this folder is already watched under another name (a symlink to it, or a loop)."""
        return self._watched_ids.get(identity, rel) != rel

    def watch_namespaces(self) -> None:
        """Watch the root and every namespace folder, each watched before it is listed (so nothing slips by)."""
        pending = [""]
        while pending:
            rel = pending.pop()
            if not self.watch(rel, NAMESPACE):
                continue
            if rel and stat_experiment_folder(self.root, rel) is not None:
                self.unwatch(rel)  # became an experiment in the meantime; the catch-up sync reads it
                continue
            pending.extend(self._child_namespaces(rel))

    def _child_namespaces(self, rel: str) -> Iterator[str]:
        """Folders directly in ``rel`` that are not experiments (and not already watched under another name)."""
        folder = os.path.join(self.root, rel) if rel else self.root
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if not rel and entry.name == INDEX_FOLDER_NAME:
                continue
            try:
                if not entry.is_dir() or is_alias(entry.path, self.real_root):
                    continue
                identity = entry.stat()
            except OSError:
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            if self.watched_elsewhere((identity.st_dev, identity.st_ino), child):
                continue
            if stat_experiment_folder(self.root, child) is None:
                yield child

    # ------------------------------------------------- running experiments

    def watch_experiment(self, rel: str) -> bool:
        """Watch a running experiment, or, past the watch budget, stat its metadata every ``poll_interval``.

        Killed runs stay ``running`` forever, so an archive can hold thousands;
        namespaces keep inotify, and only the running runs that do not fit are
        polled (one stat each, not a walk of the archive).
        """
        try:
            return self.watch(rel, EXPERIMENT)
        except WatchLimitReached:
            current = stat_experiment_folder(self.root, rel)
            if current is None:
                return False
            if rel not in self._polled:
                self._polled[rel] = (current.meta_mtime_ns, current.meta_size, current.folder_mtime_ns)
                self._poll_queue.append(rel)
            return True

    def watch_running_experiments(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Watch each running experiment ``(rel_path, meta_mtime_ns, meta_size)`` as indexed, then
        re-check it (a rewrite before the watch existed is not lost)."""
        for rel, meta_mtime_ns, meta_size in rows:
            if not self.watch_experiment(rel):
                self._queue.add_targets([rel])
                continue
            current = stat_experiment_folder(self.root, rel)
            if current is None or (current.meta_mtime_ns, current.meta_size) != (meta_mtime_ns, meta_size):
                self._queue.add_targets([rel])

    def poll_unwatched_experiments(self) -> None:
        """Requeue the polled running experiments whose metadata or folder changed since the last look.

        Every ``poll_interval`` the next slice of them is looked at,
        round-robin, so each is seen every ``poll_interval`` while few and
        every ``count / POLLED_EXPERIMENTS_PER_SECOND`` seconds when many.
        """
        if not self._polled or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.poll_interval
        queue = self._poll_queue
        for _ in range(min(len(queue), max(1, int(POLLED_EXPERIMENTS_PER_SECOND * self.poll_interval)))):
            rel = queue.popleft()
            if rel not in self._polled:
                continue  # unwatched since: dropped from the round (a run watched again meanwhile is polled twice)
            queue.append(rel)
            stamp = self._polled[rel]
            current = stat_experiment_folder(self.root, rel)
            now = None if current is None else (current.meta_mtime_ns, current.meta_size, current.folder_mtime_ns)
            if now != stamp:
                self._polled[rel] = now
                self._queue.add_targets([rel])

    def note(self) -> str:
        """What inotify mode watches, for the heartbeat and ``daemon status``."""
        polled_count = len(self._polled)
        round_seconds = max(self.poll_interval, polled_count / POLLED_EXPERIMENTS_PER_SECOND)
        polled = f"; {polled_count} more running experiments polled every {round_seconds:g} s" if polled_count else ""
        return f"inotify: {len(self._watches)} watches (root, namespaces, running experiments; limit {self.limit}){polled}"
