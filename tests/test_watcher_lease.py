"""One watcher per archive across hosts: the lease in the index, on SQLite and on PostgreSQL.

The "hosts" are processes of this machine posing as ``alpha`` and ``beta``
(``PYCOMEX_INDEX_HOSTNAME``) on one archive and one index, as two hosts
sharing an archive on NFS and an index on PostgreSQL would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pycomex_index.lease import HOSTNAME_ENV_VARIABLE, Holder, Lease, acquire_lease, read_lease, release_lease, renew_lease
from pycomex_index.store import open_archive_index
from pycomex_index.watcher import ArchiveWatcher, WatchSettings

from .test_watcher import wait_until

ALPHA = Holder("alpha", 4242, "100@boot")
BETA = Holder("beta", 4242, "200@boot")


def lease_of(archive: Path) -> Lease | None:
    with open_archive_index(str(archive)) as index:
        return read_lease(index.db, index.archive_id)


# ------------------------------------------------------------ the statements


def test_the_lease_goes_to_one_holder_until_it_expires_then_to_another(archive: Path, index_backend: str) -> None:
    with open_archive_index(str(archive)) as index:
        db, archive_id = index.db, index.archive_id
        assert acquire_lease(db, archive_id, ALPHA, seconds=0.5, started_at=1.0).holder == ALPHA
        refused = acquire_lease(db, archive_id, BETA, seconds=0.5, started_at=2.0)
        assert (refused.holder, refused.started_at) == (ALPHA, 1.0) and refused.is_live()
        assert renew_lease(db, archive_id, ALPHA, seconds=0.5)
        assert acquire_lease(db, archive_id, ALPHA, seconds=0.5, started_at=1.0).holder == ALPHA  # its own again

        assert wait_until(lambda: not read_lease(db, archive_id).is_live(), timeout=3)
        taken = acquire_lease(db, archive_id, BETA, seconds=30, started_at=2.0)
        assert (taken.holder, taken.started_at) == (BETA, 2.0) and taken.remaining > 29
        assert not renew_lease(db, archive_id, ALPHA, seconds=30)  # the old holder learns it lost the lease
        release_lease(db, archive_id, ALPHA)  # giving up a lease it lost touches the new holder's nothing
        assert read_lease(db, archive_id).holder == BETA
        release_lease(db, archive_id, BETA)
        assert read_lease(db, archive_id) is None


def test_a_dead_holder_of_this_host_is_replaced_at_once_a_live_one_never(archive: Path, index_backend: str) -> None:
    me = Holder.this_process()
    gone = Holder(me.host, _pid_of_a_finished_process(), "")
    reused = Holder(me.host, me.pid, "1@another-boot")  # this very pid, started another time: not this process
    with open_archive_index(str(archive)) as index:
        db, archive_id = index.db, index.archive_id
        assert acquire_lease(db, archive_id, gone, seconds=60, started_at=1.0).holder == gone
        assert acquire_lease(db, archive_id, me, seconds=60, started_at=2.0).holder == me
        assert acquire_lease(db, archive_id, gone, seconds=60, started_at=3.0).holder == me  # a live holder stays
        release_lease(db, archive_id, me)
        assert acquire_lease(db, archive_id, reused, seconds=60, started_at=1.0).holder == reused
        assert acquire_lease(db, archive_id, me, seconds=60, started_at=2.0).holder == me
        release_lease(db, archive_id, me)


def _pid_of_a_finished_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_watcher_whose_lease_was_taken_over_stops_with_an_error(archive: Path, index_backend: str) -> None:
    watcher = ArchiveWatcher(str(archive), settings=WatchSettings(lease_seconds=1.5, quiet_after=1e9))
    watcher.start()
    try:
        assert watcher.wait_ready(20), watcher.error
        with open_archive_index(str(archive)) as index:
            with index.db.transaction():  # as if beta had found the lease expired and taken it
                index.db.execute(
                    "UPDATE watchers SET hostname = 'beta', pid = 7, process_start = '' WHERE archive_id = :archive_id",
                    {"archive_id": index.archive_id},
                )
        assert wait_until(lambda: not watcher.is_alive(), timeout=10)
    finally:
        watcher.stop(30)
    assert "host beta (pid 7) took the watcher's lease over" in str(watcher.error)
    assert lease_of(archive).holder.host == "beta"  # stopping gave up nothing that was beta's
