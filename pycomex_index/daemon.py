"""The daemon wrapper around the watcher: one background watcher per archive, with a pid file and a log.

``start_daemon`` launches ``python -m pycomex_index watch ... --log-file ...``
as a detached process (a new session, no terminal: stdin/stdout/stderr go to
/dev/null and the log to a rotating ``daemon.log``) and returns once that
process holds the archive's lease. The watcher process itself takes the pid
file and the lease, so a foreground ``watch`` counts as the archive's one
watcher too.

The lease in the index (:mod:`pycomex_index.lease`) decides which process,
on which host, is the archive's watcher: ``daemon start`` on another host
names the holder and starts nothing, ``daemon status`` shows the holder from
any host, and ``daemon stop`` only ever signals a process of its own host.
The pid file is this host's bookkeeping only (which local process to
signal; two local starts racing): ``<archive>/.pycomex_index/daemon.<host>.pid``,
named per host as an archive on NFS is shared (beside the index file instead
when the index lives elsewhere, or in the user cache for a database URL on a
read-only archive); how it is held is :mod:`pycomex_index.pidfile`'s business. The watcher's settings travel as one
:class:`~pycomex_index.watcher.WatchSettings`, on the command line of the
watcher process as :meth:`~pycomex_index.watcher.WatchSettings.to_argv`.
A database URL reaches that process in its environment (``PYCOMEX_INDEX``),
never on its command line, which ``ps`` shows every user of the host: a URL
may hold a password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from logging.handlers import RotatingFileHandler
from typing import Any

from pycomex_index.command_server import socket_of_server_started_by
from pycomex_index.discovery import INDEX_FOLDER_NAME
from pycomex_index.errors import DaemonAlreadyRunningError, DaemonError  # noqa: F401 - this module's API too
from pycomex_index.formatting import format_time
from pycomex_index.heartbeat import LIVE_MODES, MODE_STARTING, read_watcher_state
from pycomex_index.lease import Lease, host_file_tag, read_lease
from pycomex_index.paths import this_host
from pycomex_index.pidfile import (  # noqa: F401 - the pid-file functions are this module's API too
    held_pid_file,
    pid_file_owner,
    remove_stale_pid_file,
)
from pycomex_index.store import (
    INDEX_ENV_VARIABLE,
    ArchiveIndex,
    archive_path_tag,
    is_database_url,
    masked_url,
    open_archive_index,
    resolve_archive_root,
    resolve_index_location,
    user_cache_stem,
)
from pycomex_index.watcher import ArchiveWatcher, WatcherStatus, WatchSettings

logger = logging.getLogger("pycomex_index.daemon")

LOG_FILE_NAME = "daemon.log"
HINT_FILE_NAME = "daemon-hint"
LOG_MAX_BYTES = 2_000_000
LOG_BACKUP_COUNT = 3
#: How long ``daemon start`` waits for the new process to take the lease.
START_TIMEOUT_SECONDS = 20.0
#: How long ``daemon stop`` waits for the worker to finish its batch and exit.
STOP_TIMEOUT_SECONDS = 60.0
#: Exit status of a watcher process that found another watcher running.
EXIT_ALREADY_RUNNING = 75


@dataclass(frozen=True)
class DaemonFiles:
    pid_path: str
    log_path: str
    #: Touched when a read command last suggested starting the daemon (at most once a day per archive).
    hint_path: str


@dataclass
class DaemonStatus:
    """What ``daemon status`` reports; ``running`` is False when no process holds the pid file or the lease."""

    archive: str
    index: str
    running: bool
    #: The host the watcher runs on (this one, or the one holding the lease).
    host: str | None
    pid: int | None
    since: float | None
    mode: str | None
    note: str | None
    last_change_at: float | None
    backlog: int | None
    heartbeat_at: float | None
    fresh: bool
    pid_file: str
    log_file: str
    #: The socket of the command server the watcher started (this host's watcher only; None: none serves).
    command_server: str | None = None

    @property
    def heartbeat_late(self) -> bool:
        """A watcher in a live mode whose heartbeat is late (busy or stuck): commands check the disk meanwhile."""
        return self.mode in LIVE_MODES and not self.fresh

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def pid_file_name() -> str:
    """``daemon.<host>.pid``: this host's, as the folder holding it may be shared by several (NFS)."""
    return f"daemon.{host_file_tag(this_host())}.pid"


def daemon_files(root: str, location: str) -> DaemonFiles:
    """Where this host's pid file, the log and the hint stamp of this archive's daemon live (see the module docstring)."""
    prefix = _daemon_file_prefix(root, location)
    return DaemonFiles(prefix + pid_file_name(), prefix + LOG_FILE_NAME, prefix + HINT_FILE_NAME)


def _daemon_file_prefix(root: str, location: str) -> str:
    """The archive's index folder (with a trailing separator), or a per-archive stem ending in a dot."""
    archive_folder = os.path.join(root, INDEX_FOLDER_NAME)
    if not is_database_url(location):
        if os.path.dirname(location) == archive_folder:
            return archive_folder + os.sep
        # Beside an index kept elsewhere; named per archive, as one index file may serve several.
        return f"{location}.{archive_path_tag(root)}."
    if os.path.isdir(archive_folder) and os.access(archive_folder, os.W_OK):
        return archive_folder + os.sep
    return user_cache_stem(root) + "."


def _locate(path: str, index: str | None) -> tuple[str, str, DaemonFiles]:
    root = resolve_archive_root(path)
    location = resolve_index_location(root, index)
    return root, location, daemon_files(root, location)


# ------------------------------------------------------------- the watcher


def run_watcher(
    path: str,
    index: str | None = None,
    settings: WatchSettings | None = None,
    *,
    on_ready: Callable[[WatcherStatus], None] | None = None,
) -> None:
    """Run the archive's watcher in this process until SIGTERM/SIGINT (or Ctrl-C), holding the pid file.

    Used by ``watch`` in the foreground and by the daemon process. On a stop
    signal the worker finishes its batch, the heartbeat is cleared and the pid
    file removed. Raises :class:`DaemonAlreadyRunningError` when another
    watcher serves the archive.
    """
    root, location, files = _locate(path, index)
    stop = threading.Event()
    with held_pid_file(files.pid_path, root):
        watcher = ArchiveWatcher(root, location, settings)
        restore = _on_stop_signals(stop.set)
        try:
            watcher.start()
            ready_reported = False
            while not stop.wait(0.2):
                if not watcher.is_alive():
                    break
                if not ready_reported and watcher.status().ready:
                    ready_reported = True
                    if on_ready is not None:
                        on_ready(watcher.status())
        finally:
            watcher.stop()
            restore()
    if watcher.error is not None:
        raise watcher.error


def _on_stop_signals(callback: Any) -> Any:
    """Route SIGTERM and SIGINT to ``callback``; returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.signal(number, lambda *_: callback())

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore


def configure_logging(log_path: str | None) -> None:
    """Where a watcher process logs: a rotating file for the daemon (which never writes to the
    terminal that started it), else time-stamped lines on stderr (``watch`` in the foreground)."""
    if log_path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    else:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        # backslashreplace: a real path in a message may hold a byte that is not UTF-8 (a lone surrogate).
        handler = RotatingFileHandler(
            log_path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUP_COUNT, encoding="utf-8", errors="backslashreplace"
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(message)s"))
    package_logger = logging.getLogger("pycomex_index")
    for existing in list(package_logger.handlers):
        package_logger.removeHandler(existing)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    watchdog_logger = logging.getLogger("watchdog")
    watchdog_logger.addHandler(handler)
    watchdog_logger.setLevel(logging.WARNING)
    watchdog_logger.propagate = False

    def log_uncaught(args: threading.ExceptHookArgs) -> None:
        package_logger.error(
            "uncaught error in thread %s",
            args.thread.name if args.thread else "?",
            # typeshed's ExceptHookArgs allows exc_value None, logging's stub does not; logging formats it either way.
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    threading.excepthook = log_uncaught


# ------------------------------------------------------- start, stop, status


def start_daemon(
    path: str,
    index: str | None = None,
    settings: WatchSettings | None = None,
    *,
    timeout: float = START_TIMEOUT_SECONDS,
) -> DaemonStatus:
    """Start the archive's watcher as a detached background process and return once it holds the lease.

    Raises :class:`DaemonAlreadyRunningError` naming the watcher there is, on
    this host or (with its host and since when) on another one.
    """
    # Open (create, migrate) the index here, so a problem with it is reported in this terminal. First:
    # opening writes the archive's id into <archive>/.pycomex_index, which decides where the pid file is.
    with open_archive_index(path, index) as opened:
        root, location, files = _locate(path, index)
        lease = live_lease(opened)
        if lease is not None:
            raise lease.held_error(root)
        pid, alive = pid_file_owner(files.pid_path)
        if alive:
            raise DaemonAlreadyRunningError(root, pid)
        command = watcher_command(root, location, files.log_path, settings)
        environment = watcher_environment(location)
        os.makedirs(os.path.dirname(files.log_path), exist_ok=True)
        log_offset = os.path.getsize(files.log_path) if os.path.exists(files.log_path) else 0
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=environment,
        )
        deadline = time.monotonic() + timeout
        while True:
            lease = read_lease(opened.db, opened.archive_id)
            if lease is not None and lease.holder.is_local() and lease.holder.pid == process.pid:
                break
            code = process.poll()
            if code is not None:
                if code == EXIT_ALREADY_RUNNING:
                    lease = live_lease(opened)
                    if lease is not None:
                        raise lease.held_error(root)
                    raise DaemonAlreadyRunningError(root, pid_file_owner(files.pid_path)[0])
                reason = _last_log_error(files.log_path, log_offset)
                because = f": {reason}" if reason else ""
                raise DaemonError(f"the daemon exited at start (status {code}){because}; see {files.log_path}")
            if time.monotonic() > deadline:
                process.terminate()
                raise DaemonError(f"the daemon did not start within {timeout:g} s; see {files.log_path}")
            time.sleep(0.05)
    return daemon_status(root, location)


def live_lease(index: ArchiveIndex) -> Lease | None:
    """The archive's lease while a live watcher holds it, wherever it runs: the one answer to "is a watcher running"."""
    lease = read_lease(index.db, index.archive_id)
    return lease if lease is not None and lease.is_live() else None


def watcher_command(root: str, location: str, log_path: str, settings: WatchSettings | None = None) -> list[str]:
    """The command line of a daemon's watcher process: ``watch`` with these settings, logging to ``log_path``."""
    settings = settings if settings is not None else WatchSettings()
    command = [sys.executable, "-m", "pycomex_index", "watch", "--path", root]
    if not is_database_url(location):  # a URL travels in the environment: see watcher_environment
        command += ["--index", location]
    return command + ["--log-file", log_path, *settings.to_argv()]


def watcher_environment(location: str) -> dict[str, str]:
    """The environment of a daemon's watcher process: this one's, with a database URL in ``PYCOMEX_INDEX``.

    ``/proc/PID/environ`` is readable by the process's owner and root only,
    while its command line is readable by everyone.
    """
    environment = dict(os.environ)
    if is_database_url(location):
        environment[INDEX_ENV_VARIABLE] = location
    else:
        environment.pop(INDEX_ENV_VARIABLE, None)  # --index names the file
    return environment


def _last_log_error(log_path: str, offset: int) -> str | None:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as file:
            file.seek(offset)
            lines = file.read().splitlines()
    except OSError:
        return None
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    if not errors:
        return None
    return errors[-1].split("] ", 1)[-1]


def stop_daemon(path: str, index: str | None = None, *, timeout: float | None = None) -> int | None:
    """Ask this host's watcher of the archive to stop (SIGTERM) and wait until it has; returns its pid, or None
    when none was running (a stale pid file is removed). It waits ``timeout`` seconds (None:
    :data:`STOP_TIMEOUT_SECONDS`).

    Only a process of this host is ever signalled (the pid file is this
    host's): a watcher holding the lease on another host raises
    :class:`DaemonError` saying where it runs.
    """
    root, location, files = _locate(path, index)
    pid, alive = pid_file_owner(files.pid_path)
    if not alive:
        remove_stale_pid_file(files.pid_path)
        with open_archive_index(root, location, allow_read_only=True) as opened:
            lease = live_lease(opened)
        if lease is not None and not lease.holder.is_local():
            holder = lease.holder
            raise DaemonError(
                f"the watcher of {root} runs on host {holder.host} (pid {holder.pid}, since "
                f"{format_time(lease.started_at)}): stop it there"
            )
        return None
    if pid is None:
        raise DaemonError(f"the pid file {files.pid_path} is held but names no process")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if timeout is None:
        timeout = STOP_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    while pid_file_owner(files.pid_path)[1]:
        if time.monotonic() > deadline:
            raise DaemonError(
                f"the daemon (pid {pid}) has not stopped after {timeout:g} s; it may be finishing a long sync "
                f"(see {files.log_path}); `kill -9 {pid}` stops it at once, the next command then syncs"
            )
        time.sleep(0.02)
    return pid


def daemon_status(path: str, index: str | None = None) -> DaemonStatus:
    """Whether a watcher runs for the archive, on this host or another, and what its heartbeat says."""
    root, location, files = _locate(path, index)
    pid, alive = pid_file_owner(files.pid_path)
    status = DaemonStatus(
        archive=root,
        index=masked_url(location),
        running=alive,
        host=this_host() if alive else None,
        pid=pid if alive else None,
        since=None,
        mode=None,
        note=None,
        last_change_at=None,
        backlog=None,
        heartbeat_at=None,
        fresh=False,
        pid_file=files.pid_path,
        log_file=files.log_path,
    )
    with open_archive_index(root, location, allow_read_only=True) as opened:
        lease = live_lease(opened)
        state = read_watcher_state(opened)
    if not alive:
        if lease is None or lease.holder.is_local():
            return status
        # Held by a watcher on another host.
        status.running, status.host, status.pid = True, lease.holder.host, lease.holder.pid
        pid = lease.holder.pid
    else:
        with contextlib.suppress(OSError):
            status.since = os.stat(files.pid_path).st_mtime
        status.command_server = None if pid is None else socket_of_server_started_by(pid)
    if state is not None and state.hostname == status.host and state.pid == pid:
        status.since = state.started_at
        status.mode = state.mode
        status.note = state.note
        status.last_change_at = state.last_change_at
        status.backlog = state.backlog
        status.heartbeat_at = state.heartbeat_at
        status.fresh = state.is_fresh()
    else:
        status.mode = MODE_STARTING
        status.note = "opening the index"
    return status
