"""One watcher per archive across hosts: the lease in the index, on SQLite and on PostgreSQL.

The "hosts" are processes of this machine posing as ``alpha`` and ``beta``
(``PYCOMEX_INDEX_HOSTNAME``) on one archive and one index, as two hosts
sharing an archive on NFS and an index on PostgreSQL would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycomex_index.formatting import format_time
from pycomex_index.lease import (
    Holder,
    Lease,
    acquire_lease,
    read_lease,
    release_lease,
    renew_lease,
)
from pycomex_index.paths import HOSTNAME_ENV_VARIABLE, process_is_alive
from pycomex_index.store import open_archive_index
from pycomex_index.watcher import ArchiveWatcher, WatchSettings

from .test_daemon import is_this_archives_watcher
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


@pytest.mark.parametrize("writer_clock_offset", [-3600.0, 3600.0])
def test_the_heartbeat_keeps_the_databases_time_whatever_the_watchers_host_clock_says(
    archive: Path, index_backend: str, monkeypatch: pytest.MonkeyPatch, writer_clock_offset: float
) -> None:
    """A watcher on a host whose clock is an hour off: readers trust it while it beats, and no longer after."""
    import time

    from pycomex_index.heartbeat import STALE_AFTER_SECONDS, read_watcher_state, write_heartbeat

    with open_archive_index(str(archive)) as index:
        db, archive_id = index.db, index.archive_id
        assert acquire_lease(db, archive_id, ALPHA, seconds=60, started_at=1.0).holder == ALPHA
        true_time = time.time
        with monkeypatch.context() as host_clock:
            host_clock.setattr(time, "time", lambda: true_time() + writer_clock_offset)
            write_heartbeat(index, ALPHA, mode="polling", backlog=0, last_change_at=None)
        state = read_watcher_state(index)
        assert abs(state.heartbeat_age) < 2 and state.is_fresh()

        # The watcher went silent: its last beat ages on the database's clock, whatever the beat's host said.
        with db.transaction():
            db.execute(
                "UPDATE watchers SET heartbeat_at = heartbeat_at - :gone WHERE archive_id = :archive_id",
                {"gone": STALE_AFTER_SECONDS + 1, "archive_id": archive_id},
            )
        assert not read_watcher_state(index).is_fresh()


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


# ------------------------------------------------------- two hosts, two daemons


class Host:
    """Runs ``pycomex-index`` as if on host ``name``."""

    def __init__(self, name: str, archive: Path) -> None:
        self.name = name
        self.archive = archive

    def run(self, *args: str) -> subprocess.CompletedProcess:
        environment = {**os.environ, HOSTNAME_ENV_VARIABLE: self.name}
        result = subprocess.run(
            [sys.executable, "-m", "pycomex_index", *args, "--path", str(self.archive)],
            capture_output=True,
            text=True,
            timeout=90,
            env=environment,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def hosts(archive: Path) -> Iterator[tuple[Host, Host]]:
    yield Host("alpha", archive), Host("beta", archive)
    for name in ("alpha", "beta"):
        Host(name, archive).run("daemon", "stop")
    lease = lease_of(archive)
    if lease is not None and process_is_alive(lease.holder.pid) and is_this_archives_watcher(lease.holder.pid, archive):
        os.kill(lease.holder.pid, signal.SIGKILL)


def started(host: Host, *options: str) -> Lease:
    result = host.run("daemon", "start", *options)
    assert result.returncode == 0, result.stderr
    lease = lease_of(host.archive)
    assert lease is not None and lease.holder.host == host.name and f"(pid {lease.holder.pid})" in result.stdout
    with open_archive_index(str(host.archive)) as index:
        ready = wait_until(
            lambda: index.db.fetch_one("SELECT mode FROM watchers")[0] in ("inotify", "polling"), timeout=20
        )
    assert ready
    return lease


def test_one_daemon_per_archive_across_hosts_and_a_silent_hosts_lease_is_taken_over(
    archive: Path, index_backend: str, hosts: tuple[Host, Host]
) -> None:
    alpha, beta = hosts
    first = started(alpha, "--lease-seconds", "5")
    pid, since = first.holder.pid, format_time(first.started_at)
    held = f"a watcher is already running for {archive} on host alpha (pid {pid}, since {since})"

    refused = beta.run("daemon", "start")
    assert (refused.returncode, refused.stderr) == (1, f"Error: {held}\n")
    in_foreground = beta.run("watch")  # the watcher process itself asks the lease, not only `daemon start`
    assert in_foreground.returncode == 1 and held in in_foreground.stderr

    status = beta.run("daemon", "status")
    assert status.returncode == 0 and status.stdout.startswith(f"running on host alpha (pid {pid}, since {since}, ")
    as_json = json.loads(beta.run("daemon", "status", "--json").stdout)
    assert (as_json["running"], as_json["host"], as_json["pid"]) == (True, "alpha", pid)
    assert alpha.run("daemon", "status").stdout.startswith(f"running (pid {pid}, since ")

    not_here = beta.run("daemon", "stop")
    assert not_here.returncode == 1
    assert (
        not_here.stderr
        == f"Error: the watcher of {archive} runs on host alpha (pid {pid}, since {since}): stop it there\n"
    )
    assert process_is_alive(pid) and lease_of(archive).holder == first.holder

    # Alpha goes silent: its lease still holds until it expires, then beta takes the archive over.
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not process_is_alive(pid))
    still_held = beta.run("daemon", "start")
    assert (still_held.returncode, still_held.stderr) == (1, f"Error: {held}\n")
    assert wait_until(lambda: not lease_of(archive).is_live(), timeout=10)
    second = started(beta)
    assert second.holder.pid != pid
    assert alpha.run("daemon", "status").stdout.startswith(f"running on host beta (pid {second.holder.pid}, since ")

    assert alpha.run("daemon", "stop").returncode == 1
    assert beta.run("daemon", "stop").stdout == f"Stopped the daemon (pid {second.holder.pid}).\n"
    assert lease_of(archive) is None
    assert (alpha.run("daemon", "status").returncode, beta.run("daemon", "status").returncode) == (3, 3)


def test_each_host_keeps_its_own_pid_file_beside_the_shared_archive(archive: Path, hosts: tuple[Host, Host]) -> None:
    alpha, _ = hosts
    lease = started(alpha)
    pid_file = archive / ".pycomex_index" / "daemon.alpha.pid"
    assert pid_file.read_text().split() == [str(lease.holder.pid)]
    assert not (archive / ".pycomex_index" / "daemon.beta.pid").exists()
    assert alpha.run("daemon", "stop").returncode == 0
    assert not pid_file.exists()  # stop returns once the watcher is gone
