"""The background watcher: applies changes on disk to the index as they happen.

Watching scales with what can change, not with the archive: one
non-recursive inotify watch on the archive root and on every namespace folder
(new, deleted and moved experiment folders appear there) plus one on each
experiment whose status is ``running`` (pycomex rewrites its metadata at the
end). An archive of a million runs in a hundred namespaces needs about a
hundred watches, all on one inotify file descriptor read by one thread.
Finished experiments are not watched: a slow periodic re-walk
(:func:`~pycomex_index.sync.sync_archive`, in a child process:
:mod:`pycomex_index.sync_process`) catches later edits and assets added to
them. Nor are running experiments unchanged for
``WatchSettings.quiet_after`` (a day: killed runs stay ``running`` forever);
they are stat-polled every minute, and watched again once they change.

When the watches needed exceed the limit (the kernel's ``max_user_watches``
minus a margin, capped; see :func:`default_watch_limit`), running
experiments past it are polled (namespaces past it: all of it is); when inotify cannot work (a network
filesystem, where writes from other hosts raise no events) or with
``polling``, the watcher polls instead: a cheap ``sync_archive`` every
``poll_interval`` seconds. The mode and the reason are in the heartbeat, so
``daemon status`` and the log say so; no change is silently missed.

The parts, one module each:

- :mod:`.settings` — :class:`WatchSettings`, the knobs, validated once;
- :mod:`.system` — the watch budget and the filesystem type;
- :mod:`.changes` — the change queue and its debounce;
- :mod:`.watches` — the observer, the watch budget, the runs polled past it;
- :mod:`.applier` — applies a batch of changes to the index;
- :mod:`.reconcile` — the periodic re-walk on its own thread;
- :mod:`.state` — the mode, note and last change other threads may read;
- :mod:`.core` — :class:`ArchiveWatcher`: lifecycle, worker loop, heartbeat.

Importing this package does not import watchdog; starting a watcher in
inotify mode does.
"""

from __future__ import annotations

from pycomex_index.errors import InvalidWatchSettingsError
from pycomex_index.heartbeat import MODE_INOTIFY, MODE_POLLING, MODE_STARTING
from pycomex_index.watcher.core import ArchiveWatcher, watch_once
from pycomex_index.watcher.settings import (
    DEFAULT_POLL_INTERVAL_SECONDS,
    DEFAULT_RECONCILE_INTERVAL_SECONDS,
    WatchSettings,
)
from pycomex_index.watcher.state import WatcherStatus
from pycomex_index.watcher.system import (
    MAX_WATCHES_ENV_VARIABLE,
    default_watch_limit,
    filesystem_type,
    is_network_filesystem,
)

__all__ = [
    "ArchiveWatcher",
    "DEFAULT_POLL_INTERVAL_SECONDS",
    "DEFAULT_RECONCILE_INTERVAL_SECONDS",
    "InvalidWatchSettingsError",
    "MAX_WATCHES_ENV_VARIABLE",
    "MODE_INOTIFY",
    "MODE_POLLING",
    "MODE_STARTING",
    "WatchSettings",
    "WatcherStatus",
    "default_watch_limit",
    "filesystem_type",
    "is_network_filesystem",
    "watch_once",
]
