"""The watcher's heartbeat in the index: written by the watcher, read by every read command.

A read command skips the disk walk only when the archive's watcher wrote a
heartbeat within :data:`STALE_AFTER_SECONDS` and (on the same host) its
process is still alive. Anything else (no watcher, a killed one, a stale
heartbeat) means the command syncs as if no watcher existed.

The heartbeat lives in the watcher's lease row (:mod:`pycomex_index.lease`):
only the lease's holder writes it, and giving the lease up clears it. Like
the lease it keeps the database's time, and its age is worked out there too,
so a reader on a host whose clock is off never trusts a watcher that stopped
(nor distrusts a live one).
"""

from __future__ import annotations

from dataclasses import dataclass

from pycomex_index.lease import HOLDER_IS, Holder, database_now, holder_params, release_lease
from pycomex_index.store import ArchiveIndex

#: How often a healthy watcher writes its heartbeat.
HEARTBEAT_INTERVAL_SECONDS = 1.0
#: A heartbeat older than this no longer vouches for the index.
STALE_AFTER_SECONDS = 5.0
#: The watcher's modes, as its heartbeat records them.
MODE_INOTIFY, MODE_POLLING, MODE_STARTING = "inotify", "polling", "starting"
#: Modes in which the watcher keeps the index current; ``starting`` (still catching up) vouches for nothing.
LIVE_MODES = frozenset({MODE_INOTIFY, MODE_POLLING})


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
    process_start: str
    #: Seconds since ``heartbeat_at``, on the database's clock.
    heartbeat_age: float

    @property
    def holder(self) -> Holder:
        return Holder(self.hostname, self.pid, self.process_start)

    def is_fresh(self) -> bool:
        if self.mode not in LIVE_MODES or self.heartbeat_age > STALE_AFTER_SECONDS:
            return False
        return not self.holder.is_dead_here()


def read_watcher_state(index: ArchiveIndex) -> WatcherState | None:
    row = index.db.fetch_one(
        "SELECT pid, hostname, mode, started_at, heartbeat_at, last_change_at, backlog, note, process_start, "
        f"{database_now(index.db)} - heartbeat_at FROM watchers WHERE archive_id = :archive_id",
        {"archive_id": index.archive_id},
    )
    return WatcherState(*row) if row else None


def has_fresh_watcher(index: ArchiveIndex) -> bool:
    """True when a live watcher keeps this archive's index current, so reads may skip the disk walk."""
    state = read_watcher_state(index)
    return state is not None and state.is_fresh()


def write_heartbeat(
    index: ArchiveIndex,
    holder: Holder,
    *,
    mode: str,
    backlog: int,
    last_change_at: float | None,
    note: str | None = None,
) -> None:
    """Record that ``holder`` watches the archive, as of now; nothing when it holds the lease no more."""
    with index.db.transaction():
        index.db.execute(
            f"UPDATE watchers SET mode = :mode, heartbeat_at = {database_now(index.db)}, "
            "last_change_at = :last_change_at, backlog = :backlog, note = :note "
            f"WHERE archive_id = :archive_id AND {HOLDER_IS}",
            {
                "archive_id": index.archive_id,
                **holder_params(holder),
                "mode": mode,
                "last_change_at": last_change_at,
                "backlog": backlog,
                "note": note,
            },
        )


def clear_heartbeat(index: ArchiveIndex, holder: Holder) -> None:
    """Remove ``holder``'s heartbeat and lease (on a clean stop), so reads sync again at once."""
    release_lease(index.db, index.archive_id, holder)
