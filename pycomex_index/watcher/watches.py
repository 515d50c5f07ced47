"""The watch set: which folders inotify watches, within a budget, and the running runs polled instead.

One non-recursive watch on the archive root and on every namespace folder
(new, deleted and moved experiment folders appear there) plus one on each
experiment whose status is ``running`` (pycomex rewrites its metadata at the
end). Every watch lives on one inotify file descriptor read by one thread
(watchdog's ``InotifyFD``; its observer would run one emitter thread per
watch: 4,100 threads and ~125 MB at 100,000 runs). Running experiments that
do not fit the budget are stat-polled, round-robin, at a bounded rate; those
unchanged for ``quiet_after`` (killed runs stay ``running`` forever) are not
watched but polled every :data:`QUIET_POLL_SECONDS`. watchdog is imported
only when the reader starts.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pycomex_index.discovery import INDEX_FOLDER_NAME, FolderStat, stat_experiment_folder
from pycomex_index.paths import folder_on_disk, path_in_index
from pycomex_index.watcher.changes import ChangeQueue
from pycomex_index.watcher.system import MAX_WATCHES_ENV_VARIABLE, is_alias

logger = logging.getLogger("pycomex_index.watcher")

NAMESPACE = "namespace"
EXPERIMENT = "experiment"
#: Running experiments past the watch budget are stat-polled round-robin at most this fast (~3% of a core):
#: killed runs stay "running" forever, and 46,000 of them polled every 2 s took a third of a core.
POLLED_EXPERIMENTS_PER_SECOND = 2000
#: How often running experiments taken for interrupted (unchanged for ``quiet_after``) are looked at.
QUIET_POLL_SECONDS = 60.0


class WatchLimitReached(Exception):
    """More folders need watching than the limit allows (or inotify cannot work): the watcher polls."""


def event_mask() -> int:
    """What every watch asks the kernel for: entries created, deleted or moved in and out, files written
    or touched, and the folder's own deletion (then its watch ends).

    Not open, close or access: on a large archive those flood the kernel queue (measured on 100,000
    folders: watchdog's default mask never delivered an event, looping on overflow at a full core;
    this mask cost 1.8 s to set up and events arrived in under 1 ms). The same events as watchdog's ``event_filter`` of created, modified, deleted and moved
    events asked for; symlinks to folders are followed, as discovery follows them.
    """
    from watchdog.observers.inotify_c import InotifyConstants as flags

    return (
        flags.IN_CREATE
        | flags.IN_MODIFY
        | flags.IN_ATTRIB
        | flags.IN_DELETE
        | flags.IN_MOVED_FROM
        | flags.IN_MOVED_TO
        | flags.IN_DELETE_SELF
        | flags.IN_ONLYDIR
    )


#: watchdog keys the callbacks of one inotify watch by an id; the recorder is the only one on each watch.
RECORDER_ID = 1


class EventRecorder:
    """The callback of every watch (watchdog's ``WatchCallback``), called on the one reader thread:
    records which path changed, nothing else (the worker does the work).

    One inotify file descriptor serves every watch; watchdog's ``InotifyFD``
    reads it on one thread and calls this with the watch descriptor of each
    event, which this maps back to the watched folder.
    """

    def __init__(self, queue: ChangeQueue, on_overflow: Callable[[], None]) -> None:
        self._queue = queue
        self._on_overflow = on_overflow
        self._lock = threading.Lock()
        # Must be held when accessing the three fields below: the worker writes them, the reader reads them.
        self._folder_for_wd: dict[int, str] = {}
        self._dead: set[int] = set()
        self._last_event_at: dict[int, float] = {}

    def track(self, wd: int, rel: str) -> None:
        with self._lock:
            self._folder_for_wd[wd] = rel
            self._dead.discard(wd)
            self._last_event_at.pop(wd, None)

    def untrack(self, wd: int) -> None:
        with self._lock:
            self._folder_for_wd.pop(wd, None)
            self._dead.discard(wd)
            self._last_event_at.pop(wd, None)

    def is_dead(self, wd: int) -> bool:
        """True once the kernel ended the watch (its folder was deleted)."""
        with self._lock:
            return wd in self._dead

    def last_event_at(self, wd: int) -> float | None:
        """When (monotonic) the last event of this watch arrived; None before the first."""
        with self._lock:
            return self._last_event_at.get(wd)

    # watchdog's WatchCallback protocol, called on the reader thread.

    def on_event(self, event: Any) -> None:
        with self._lock:
            rel = self._folder_for_wd.get(event.wd)
            if rel is None:
                return  # unwatched meanwhile
            self._last_event_at[event.wd] = time.monotonic()
        # Queued as stored (paths.path_in_index), like every path the worker handles: an odd byte or a
        # backslash in a name would otherwise fail in SQL or name another folder's row.
        name = path_in_index(os.fsdecode(event.name))
        self._queue.add_paths([f"{rel}/{name}" if rel and name else name or rel])

    def on_watch_deleted(self, wd: int) -> None:
        with self._lock:
            if wd in self._folder_for_wd:
                self._dead.add(wd)

    def on_queue_overflow(self) -> None:
        self._on_overflow()


def _entries(folder: str) -> Iterator[os.DirEntry[str]]:
    """The folder's entries as they are read, none if it cannot be: a list of a namespace of 220,000 runs
    would hold as many entries at once (~75 MB, the daemon's peak at 1,000,000 runs)."""
    try:
        with os.scandir(folder) as entries:
            yield from entries
    except OSError:
        return


def folder_stamp(folder: FolderStat | None) -> tuple[int, int, int] | None:
    """What tells whether an experiment changed: its metadata's mtime and size, and its folder's mtime."""
    return None if folder is None else (folder.meta_mtime_ns, folder.meta_size, folder.folder_mtime_ns)


class PollRound:
    """Running experiments stat-polled instead of watched, round-robin, a slice at each tick.

    Each is looked at every ``period`` seconds while few, and every
    ``count / POLLED_EXPERIMENTS_PER_SECOND`` seconds when many. The worker thread only.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        # rel_path -> stamp last seen (None: no longer an experiment).
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._order: collections.deque[str] = collections.deque()

    def __contains__(self, rel: str) -> bool:
        return rel in self._stamps

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, rel: str, stamp: tuple[int, int, int] | None) -> None:
        if rel not in self._stamps:
            self._order.append(rel)
        self._stamps[rel] = stamp

    def discard(self, rel: str) -> None:
        self._stamps.pop(rel, None)  # its place in the order goes at its next turn

    def round_seconds(self) -> float:
        return max(self.period, len(self._stamps) / POLLED_EXPERIMENTS_PER_SECOND)

    def poll(self, root: str, tick: float) -> list[str]:
        """Look at this tick's slice (``tick`` seconds since the last); the experiments that changed."""
        order, stamps = self._order, self._stamps
        wanted = math.ceil(len(stamps) * min(1.0, tick / self.period))
        changed = []
        for _ in range(min(len(order), max(1, wanted), max(1, int(POLLED_EXPERIMENTS_PER_SECOND * tick)))):
            rel = order.popleft()
            if rel not in stamps:
                continue  # dropped from the round
            order.append(rel)
            now = folder_stamp(stat_experiment_folder(root, rel))
            if now != stamps[rel]:
                stamps[rel] = now
                changed.append(rel)
        return changed


class IndexedChildren(NamedTuple):
    """What the index holds directly in one folder: names of experiments, and of folders with experiments below."""

    experiments: set[str]
    folders: set[str]


@dataclass(slots=True)
class _Watch:
    """One inotify watch: its descriptor, what the folder is, the folder's identity, since when (monotonic).

    Slots: a daemon on 1,000,000 runs holds 50,000 of them (one per run still marked running).
    """

    wd: int
    kind: str
    identity: tuple[int, int]
    since: float


class WatchSet:
    """Every inotify watch the watcher holds, and the running experiments polled instead.

    Used by the worker thread only, except :meth:`count`. ``root`` and
    ``real_root`` are set by the worker before :meth:`start`.
    """

    def __init__(
        self,
        queue: ChangeQueue,
        *,
        limit: int,
        poll_interval: float,
        on_overflow: Callable[[], None],
        quiet_after: float = math.inf,
    ) -> None:
        self.root = ""
        self.real_root = ""
        self.limit = limit
        self.poll_interval = poll_interval
        self.quiet_after = quiet_after
        self._queue = queue
        self._recorder = EventRecorder(queue, on_overflow)
        self._inotify: Any = None  # watchdog's InotifyFD: the one file descriptor and its reader thread
        # Must be held when changing _watches, and when reading it from another thread (count()).
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._watched_ids: dict[tuple[int, int], str] = {}
        #: Running experiments past the watch budget, polled every poll_interval (or at the capped rate).
        self._polled = PollRound(poll_interval)
        #: Running experiments unchanged for quiet_after, taken for interrupted: polled rarely, not watched.
        self._quiet = PollRound(QUIET_POLL_SECONDS)
        self._next_poll = 0.0
        self._next_quiet_check = time.monotonic() + QUIET_POLL_SECONDS

    @property
    def active(self) -> bool:
        """True while inotify watches (the reader runs); False when polling or not started."""
        return self._inotify is not None

    def count(self) -> int:
        with self._lock:
            return len(self._watches)

    # -------------------------------------------------------- the reader

    def start(self) -> None:
        """Open the inotify file descriptor and start its reader thread; raises WatchLimitReached when
        inotify is not available."""
        try:
            from watchdog.observers.inotify_c import InotifyFD
        except Exception as error:  # noqa: BLE001 - not Linux, or no inotify: poll
            raise WatchLimitReached(f"inotify is not available ({error})") from None
        try:
            inotify = InotifyFD()  # its own descriptor, not watchdog's shared get_instance()
        except OSError as error:
            raise WatchLimitReached(f"inotify is not available ({error.strerror or error})") from None
        inotify.name = "pycomex-index-inotify"
        inotify.start()
        self._inotify = inotify

    def stop(self) -> None:
        """Drop every watch and stop the reader (the polled experiments are kept)."""
        inotify, self._inotify = self._inotify, None
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            self._recorder.untrack(watch.wd)
        self._watched_ids.clear()
        if inotify is not None:
            try:
                inotify.stop()  # removes every watch and closes the descriptor
                inotify.join(10)
            except Exception:  # noqa: BLE001
                logger.exception("could not stop the inotify reader cleanly")

    # ------------------------------------------------------------- watches

    def kind(self, rel: str) -> str | None:
        """What a watched folder is (namespace or experiment), None when unwatched; forgets dead watches."""
        watch = self._watches.get(rel)
        if watch is None:
            return None
        if self._recorder.is_dead(watch.wd):
            self.unwatch(rel)
            return None
        return watch.kind

    def scheduled_kind(self, rel: str) -> str | None:
        """What a folder was watched as, dead watch or not (an event from it names the folder)."""
        watch = self._watches.get(rel)
        return None if watch is None else watch.kind

    def is_polled(self, rel: str) -> bool:
        return rel in self._polled or rel in self._quiet

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
        folder = folder_on_disk(self.root, rel)
        try:
            folder_stat = os.stat(folder)
            identity = (folder_stat.st_dev, folder_stat.st_ino)
            elsewhere = self._watched_ids.get(identity)
            if elsewhere is not None:
                # One folder, one watch (inotify gives both names the same descriptor): the folder was
                # moved here, or an older name is stale; callers skip aliases before getting here.
                self.unwatch(elsewhere)
            wd = self._inotify.add_callback(os.fsencode(folder), event_mask(), self._recorder, RECORDER_ID)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise WatchLimitReached(
                    f"the system refused another inotify watch after {len(self._watches)} ({error.strerror or error})"
                ) from None
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            logger.warning("cannot watch %s: %s", folder, error.strerror or error)
            return False
        if wd < 0:
            # watchdog swallows EACCES and hands back the failed descriptor (-1): undo its bookkeeping.
            self._inotify.remove_callbacks([(wd, RECORDER_ID)])
            logger.warning("cannot watch %s: permission denied", folder)
            return False
        self._recorder.track(wd, rel)
        with self._lock:
            self._watches[rel] = _Watch(wd, kind, identity, time.monotonic())
        self._watched_ids[identity] = rel
        self._polled.discard(rel)
        self._quiet.discard(rel)
        return True

    def unwatch(self, rel: str) -> None:
        self._polled.discard(rel)
        self._quiet.discard(rel)
        with self._lock:
            watch = self._watches.pop(rel, None)
        if watch is None:
            return
        if self._watched_ids.get(watch.identity) == rel:
            del self._watched_ids[watch.identity]
        self._recorder.untrack(watch.wd)
        try:
            self._inotify.remove_callbacks([(watch.wd, RECORDER_ID)])
        except OSError:
            pass  # already gone with its folder

    def unwatch_below(self, rel: str, *, including: bool = True) -> None:
        prefix = rel + "/"
        for watched in [path for path in self._watches if path.startswith(prefix) or (including and path == rel)]:
            self.unwatch(watched)

    def watched_elsewhere(self, identity: tuple[int, int], rel: str) -> bool:
        """True when this folder is already watched under another name (a symlink to it, or a loop)."""
        return self._watched_ids.get(identity, rel) != rel

    def watch_namespaces(self, indexed_children: Callable[[str], IndexedChildren] | None = None) -> None:
        """Watch the root and every namespace folder, each watched before it is listed (so nothing slips by).

        Without ``indexed_children`` every folder in a namespace is statted to
        tell an experiment from a namespace. With it (what the index holds
        directly in a folder, just synced by the catch-up walk) the experiments
        the index knows are taken for experiments without a stat, so
        setting up the watches does not walk the archive a second time; what
        differs from the index (a run created or deleted since the walk passed)
        is queued for the worker.
        """
        pending = [""]
        while pending:
            rel = pending.pop()
            if not self.watch(rel, NAMESPACE):
                if indexed_children is not None:
                    self._queue.add_targets([rel])  # vanished since the walk: the worker forgets its runs
                continue
            if rel and stat_experiment_folder(self.root, rel) is not None:
                self.unwatch(rel)  # became an experiment in the meantime
                self._queue.add_targets([rel])
                continue
            pending.extend(self._child_namespaces(rel, indexed_children))

    def _child_namespaces(self, rel: str, indexed_children: Callable[[str], IndexedChildren] | None) -> Iterator[str]:
        """Folders directly in ``rel`` that are not experiments (and not already watched under another name)."""
        indexed = indexed_children(rel) if indexed_children is not None else IndexedChildren(set(), set())
        prefix = f"{rel}/" if rel else ""
        for entry in _entries(folder_on_disk(self.root, rel)):
            if not rel and entry.name == INDEX_FOLDER_NAME:
                continue
            name = path_in_index(entry.name)
            if name in indexed.experiments:
                indexed.experiments.discard(name)
                continue
            indexed.folders.discard(name)
            try:
                if not entry.is_dir() or (entry.is_symlink() and is_alias(entry.path, self.real_root)):
                    continue
                identity = entry.stat()
            except OSError:
                continue
            child = prefix + name
            if self.watched_elsewhere((identity.st_dev, identity.st_ino), child):
                continue
            if stat_experiment_folder(self.root, child) is None:
                yield child
            elif indexed_children is not None:
                self._queue.add_targets([child])  # an experiment the walk did not see
        gone = indexed.experiments | indexed.folders
        if gone:
            self._queue.add_targets(prefix + name for name in gone)  # gone since the walk: the worker forgets them

    # ------------------------------------------------- running experiments

    def watch_experiment(self, rel: str, current: FolderStat | None = None) -> bool:
        """Watch a running experiment (False when it is no longer one); polled instead when quiet or past
        the watch budget.

        ``current`` is its stat, when the caller just took it. Killed runs stay
        ``running`` forever, so an archive can hold thousands; namespaces keep
        inotify, and only running runs that do not fit, or have been quiet for
        ``quiet_after`` (taken for interrupted), are polled: one stat each, not a walk.
        """
        if self.kind(rel) is not None:
            return True  # watched already: an event shows it is alive, however old its stamps
        current = current if current is not None else stat_experiment_folder(self.root, rel)
        if current is None:
            return False
        if self.is_quiet(current):
            self._polled.discard(rel)
            self._quiet.add(rel, folder_stamp(current))
            return True
        try:
            return self.watch(rel, EXPERIMENT)
        except WatchLimitReached:
            self._quiet.discard(rel)
            self._polled.add(rel, folder_stamp(current))
            return True

    def is_quiet(self, current: FolderStat) -> bool:
        """Neither its metadata nor its folder changed for ``quiet_after`` seconds."""
        newest = max(current.meta_mtime_ns, current.folder_mtime_ns)
        return (time.time_ns() - newest) / 1e9 > self.quiet_after

    def watch_running_experiments(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Watch each running experiment ``(rel_path, meta_mtime_ns, meta_size)`` as indexed, then
        re-check it (a rewrite before the watch existed is not lost)."""
        for rel, meta_mtime_ns, meta_size in rows:
            before = stat_experiment_folder(self.root, rel)
            if before is None or not self.watch_experiment(rel, before):
                self._queue.add_targets([rel])
                continue
            current = before if self.is_polled(rel) else stat_experiment_folder(self.root, rel)
            if current is None or (current.meta_mtime_ns, current.meta_size) != (meta_mtime_ns, meta_size):
                self._queue.add_targets([rel])

    def poll_unwatched_experiments(self) -> None:
        """Requeue the polled running experiments whose metadata or folder changed since the last look,
        a slice of them every ``poll_interval``; and now and then retire watched runs gone quiet."""
        now = time.monotonic()
        if now >= self._next_quiet_check:
            self._next_quiet_check = now + QUIET_POLL_SECONDS
            self._retire_quiet_experiments(now)
        if now < self._next_poll:
            return
        self._next_poll = now + self.poll_interval
        for polled in (self._polled, self._quiet):
            if len(polled):
                self._queue.add_targets(polled.poll(self.root, self.poll_interval))

    def _retire_quiet_experiments(self, now: float) -> None:
        """Stop watching running experiments without an event or a change for ``quiet_after``: poll them rarely."""
        for rel, watch in list(self._watches.items()):
            if watch.kind != EXPERIMENT:
                continue
            last_event = self._recorder.last_event_at(watch.wd)
            if now - max(watch.since, last_event or 0.0) <= self.quiet_after:
                continue
            current = stat_experiment_folder(self.root, rel)
            if current is not None and self.is_quiet(current):
                self.unwatch(rel)
                self._quiet.add(rel, folder_stamp(current))

    def note(self) -> str:
        """What inotify mode watches, for the heartbeat and ``daemon status``."""
        note = f"inotify: {len(self._watches)} watches (root, namespaces, running experiments; limit {self.limit})"
        if len(self._polled):
            note += f"; {len(self._polled)} more running experiments polled every {self._polled.round_seconds():g} s"
        if len(self._quiet):
            note += (
                f"; {len(self._quiet)} running experiments unchanged for {self.quiet_after:g} s "
                f"(taken for interrupted) polled every {self._quiet.round_seconds():g} s"
            )
        return note
