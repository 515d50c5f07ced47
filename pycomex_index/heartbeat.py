"""The watcher's heartbeat in the index: written by the watcher, read by every read command.

A read command skips the disk walk only when the archive's watcher wrote a
heartbeat within :data:`STALE_AFTER_SECONDS` and (on the same host) its
process is still alive. Anything else (no watcher, a killed one, a stale
heartbeat) means the command syncs as if no watcher existed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pycomex_index.liveness import this_host
from pycomex_index.paths import process_is_alive
from pycomex_index.store import ArchiveIndex

#: How often a healthy watcher writes its heartbeat.
HEARTBEAT_INTERVAL_SECONDS = 1.0
#: A heartbeat older than this no longer vouches for the index.
STALE_AFTER_SECONDS = 5.0
#: Modes in which the watcher keeps the index current; ``starting`` (still catching up) vouches for nothing.
LIVE_MODES = frozenset({"inotify", "polling"})


@dataclass
class WatcherState:
    """What the ``watchers`` row says about the archive's watcher."""

    pid: int
    hostname: str
    mode: str
    started_at: float
    heartbeat_at: float
    last_change_at: float | None
    backlog: int
    note: str | None

    def is_fresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.mode not in LIVE_MODES or now - self.heartbeat_at > STALE_AFTER_SECONDS:
            return False
        return self.hostname != this_host() or process_is_alive(self.pid)


def read_watcher_state(index: ArchiveIndex) -> WatcherState | None:
    row = index.db.fetch_one(
        "SELECT pid, hostname, mode, started_at, heartbeat_at, last_change_at, backlog, note "
        "FROM watchers WHERE archive_id = :archive_id",
        {"archive_id": index.archive_id},
    )
    return WatcherState(*row) if row else None


def has_fresh_watcher(index: ArchiveIndex) -> bool:
    """True when a live watcher keeps this archive's index current, so reads may skip the disk walk."""
    state = read_watcher_state(index)
    return state is not None and state.is_fresh()


def write_heartbeat(
    index: ArchiveIndex,
    *,
    mode: str,
    started_at: float,
    backlog: int,
    last_change_at: float | None,
    note: str | None = None,
) -> None:
    """Record that this process watches the archive, as of now."""
    with index.db.transaction():
        index.db.execute(
            "INSERT INTO watchers (archive_id, pid, hostname, mode, started_at, heartbeat_at, last_change_at, backlog, note) "
            "VALUES (:archive_id, :pid, :hostname, :mode, :started_at, :now, :last_change_at, :backlog, :note) "
            "ON CONFLICT (archive_id) DO UPDATE SET pid = excluded.pid, hostname = excluded.hostname, "
            "mode = excluded.mode, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
            "last_change_at = excluded.last_change_at, backlog = excluded.backlog, note = excluded.note",
            {
                "archive_id": index.archive_id,
                "pid": os.getpid(),
                "hostname": this_host(),
                "mode": mode,
                "started_at": started_at,
                "now": time.time(),
                "last_change_at": last_change_at,
                "backlog": backlog,
                "note": note,
            },
        )


def clear_heartbeat(index: ArchiveIndex) -> None:
    """Remove this process's heartbeat (on a clean stop), so reads sync again at once."""
    with index.db.transaction():
        index.db.execute(
            "DELETE FROM watchers WHERE archive_id = :archive_id AND pid = :pid",
            {"archive_id": index.archive_id, "pid": os.getpid()},
        )
