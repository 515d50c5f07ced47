"""The watcher lease: which process, on which host, is an archive's one watcher, decided by the index.

A pid file only sees its own host; an archive on NFS with its index on
PostgreSQL can be watched from any host sharing them. So the ``watchers``
row of the archive is a lease: the holder (host, pid, and the process's start
as its host knows it, so a reused pid is never taken for the holder) and the
time it expires, on the database's clock, so hosts whose clocks differ agree
on it. The holder renews it every second or so; once it went silent for its
lease time, another host may take it.

Taking the lease is one statement: an upsert whose update only happens when
the lease has expired, is already this process's, or is held by a process
of this host found dead (a SIGKILLed watcher is replaced at once, not after
its lease runs out). The same transaction then reads who holds the row:
this process, or someone else, who is named. Renewing is an UPDATE guarded
by the holder's identity: when it finds no row of ours, the lease was lost.

The host name can be overridden by ``PYCOMEX_INDEX_HOSTNAME`` (tests pose
as two hosts on one machine); :func:`pycomex_index.paths.this_host` is the one place reading it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pycomex_index.db import IndexDatabase
from pycomex_index.errors import DaemonAlreadyRunningError
from pycomex_index.formatting import format_time
from pycomex_index.paths import process_is_alive, process_start_ticks, this_host


def host_file_tag(host: str) -> str:
    """``host`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", host) or "host"


def process_start(pid: int) -> str:
    """When process ``pid`` started, as ``<clock ticks since boot>@<boot id>``; "" when unknown (no /proc,
    or no such process). Two processes with one pid never share it, across reboots included."""
    ticks = process_start_ticks(pid)
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            boot_id = file.read().strip().decode()
    except OSError:
        return ""
    return f"{ticks}@{boot_id}" if ticks is not None else ""


@dataclass(frozen=True)
class Holder:
    """A watcher process: who holds, or asks for, an archive's lease."""

    host: str
    pid: int
    process_start: str

    @classmethod
    def this_process(cls) -> Holder:
        pid = os.getpid()
        return cls(this_host(), pid, process_start(pid))

    def is_local(self) -> bool:
        return self.host == this_host()

    def is_dead_here(self) -> bool:
        """True for a process of this host that has ended (or whose pid another process now has)."""
        if not self.is_local():
            return False
        if not process_is_alive(self.pid):
            return True
        return bool(self.process_start) and process_start(self.pid) != self.process_start


@dataclass(frozen=True)
class Lease:
    """The lease as the index holds it."""

    holder: Holder
    #: When the holder started watching (its own clock), for "since".
    started_at: float
    #: Seconds until it expires, on the database's clock; zero or less: expired.
    remaining: float

    def is_live(self) -> bool:
        """Held: not expired, and not by a process of this host that is gone."""
        return self.remaining > 0 and not self.holder.is_dead_here()

    def held_error(self, root: str) -> DaemonAlreadyRunningError:
        """The error saying this lease's holder watches ``root`` already (and where, when that is elsewhere)."""
        if self.holder.is_local():
            return DaemonAlreadyRunningError(root, self.holder.pid)
        return DaemonAlreadyRunningError(
            root, self.holder.pid, host=self.holder.host, since=format_time(self.started_at)
        )


def database_now(db: IndexDatabase) -> str:
    """SQL for the database's clock in seconds since the epoch (the lease's clock)."""
    if db.url.startswith("sqlite"):
        return "((julianday('now') - 2440587.5) * 86400.0)"
    return "CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS DOUBLE PRECISION)"


#: The SQL condition naming one holder's row, with :func:`holder_params` as its parameters.
HOLDER_IS = "hostname = :hostname AND pid = :pid AND process_start = :process_start"


def holder_params(holder: Holder) -> dict[str, object]:
    return {"hostname": holder.host, "pid": holder.pid, "process_start": holder.process_start}


def read_lease(db: IndexDatabase, archive_id: int) -> Lease | None:
    """The archive's lease, live or not; None when no watcher ever took it (or the last one let it go)."""
    row = db.fetch_one(
        f"SELECT hostname, pid, process_start, started_at, lease_expires_at - {database_now(db)} "
        "FROM watchers WHERE archive_id = :archive_id",
        {"archive_id": archive_id},
    )
    if row is None:
        return None
    return Lease(Holder(row[0], row[1], row[2]), row[3], row[4])


def acquire_lease(db: IndexDatabase, archive_id: int, holder: Holder, *, seconds: float, started_at: float) -> Lease:
    """Take the archive's lease for ``holder``, or find who holds it.

    Returns the lease after the attempt: ``lease.holder == holder`` when taken.
    The row starts in mode ``starting``, vouching for nothing until the
    holder's heartbeat says otherwise.
    """
    now = database_now(db)
    with db.transaction():
        current = read_lease(db, archive_id)
        # A holder of this host found dead may be replaced at once; named exactly, so a holder that
        # took the row meanwhile is not.
        dead = current.holder if current is not None and current.holder.is_dead_here() else None
        db.execute(
            "INSERT INTO watchers (archive_id, pid, hostname, process_start, mode, started_at, heartbeat_at, "
            "last_change_at, backlog, note, lease_expires_at) "
            f"VALUES (:archive_id, :pid, :hostname, :process_start, 'starting', :started_at, {now}, "
            f"NULL, 0, NULL, {now} + :seconds) "
            "ON CONFLICT (archive_id) DO UPDATE SET pid = excluded.pid, hostname = excluded.hostname, "
            "process_start = excluded.process_start, mode = excluded.mode, started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, last_change_at = NULL, backlog = 0, note = NULL, "
            "lease_expires_at = excluded.lease_expires_at "
            f"WHERE watchers.lease_expires_at <= {now} "
            "OR (watchers.hostname = :hostname AND watchers.pid = :pid AND watchers.process_start = :process_start) "
            "OR (watchers.hostname = :dead_host AND watchers.pid = :dead_pid "
            "AND watchers.process_start = :dead_process_start)",
            {
                "archive_id": archive_id,
                **holder_params(holder),
                "started_at": started_at,
                "seconds": seconds,
                "dead_host": dead.host if dead else None,
                "dead_pid": dead.pid if dead else None,
                "dead_process_start": dead.process_start if dead else None,
            },
        )
        lease = read_lease(db, archive_id)
    assert lease is not None  # the row was inserted, or it existed
    return lease


def renew_lease(db: IndexDatabase, archive_id: int, holder: Holder, *, seconds: float) -> bool:
    """Extend ``holder``'s lease by ``seconds`` from now; False when it holds the lease no more."""
    with db.transaction():
        db.execute(
            f"UPDATE watchers SET lease_expires_at = {database_now(db)} + :seconds "
            f"WHERE archive_id = :archive_id AND {HOLDER_IS}",
            {"archive_id": archive_id, "seconds": seconds, **holder_params(holder)},
        )
        row = db.fetch_one(
            f"SELECT 1 FROM watchers WHERE archive_id = :archive_id AND {HOLDER_IS}",
            {"archive_id": archive_id, **holder_params(holder)},
        )
    return row is not None


def release_lease(db: IndexDatabase, archive_id: int, holder: Holder) -> None:
    """Give the lease up (and the heartbeat with it): another watcher may start at once."""
    with db.transaction():
        db.execute(
            f"DELETE FROM watchers WHERE archive_id = :archive_id AND {HOLDER_IS}",
            {"archive_id": archive_id, **holder_params(holder)},
        )
