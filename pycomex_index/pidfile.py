"""The pid file that makes one process an archive's one watcher.

Its owner holds an exclusive ``flock`` on it for as long as it runs: the
kernel drops the lock when the process dies, even by SIGKILL, so "is a
watcher running" never depends on guessing whether a pid was reused. The
file is written under a temporary name (``O_EXCL``), locked, then hard-linked
into place, which is an atomic exclusive create (like ``O_EXCL`` on the real
name) in which the file is never visible empty or unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

from pycomex_index.errors import DaemonAlreadyRunningError, DaemonError

logger = logging.getLogger("pycomex_index.daemon")


def pid_file_owner(pid_path: str) -> tuple[int | None, bool]:
    """``(pid written in the file, whether a live process holds it)``; ``(None, False)`` without a file."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return None, False
    try:
        pid = _read_pid(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return pid, True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return pid, False
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (ValueError, IndexError, OSError):
        return None


def remove_stale_pid_file(pid_path: str) -> bool:
    """Remove a pid file no live process holds; False when its owner is alive after all."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Holding the dead file's lock, nobody else can replace it; unlink only that very file.
        with contextlib.suppress(FileNotFoundError):
            if _same_file(os.stat(pid_path), os.fstat(fd)):
                os.unlink(pid_path)
        return True
    finally:
        os.close(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def held_pid_file(pid_path: str, root: str) -> Iterator[None]:
    """Be the archive's one watcher for the duration: take the pid file, replacing a stale one, or raise
    :class:`DaemonAlreadyRunningError`. The file is removed on exit."""
    os.makedirs(os.path.dirname(pid_path), exist_ok=True)
    for _ in range(10):
        fd = _create_pid_file(pid_path)
        if fd is not None:
            break
        pid, alive = pid_file_owner(pid_path)
        if alive:
            raise DaemonAlreadyRunningError(root, pid)
        if remove_stale_pid_file(pid_path):
            logger.info("replaced the stale pid file %s (pid %s is gone)", pid_path, pid)
    else:
        raise DaemonError(f"could not take the pid file {pid_path}: it keeps changing")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_file(os.stat(pid_path), os.fstat(fd)):
                os.unlink(pid_path)
        os.close(fd)


def _create_pid_file(pid_path: str) -> int | None:
    """Create the pid file, locked and holding our pid, or None when it exists already."""
    temporary = f"{pid_path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = _new_locked_file(temporary)
    try:
        os.link(temporary, pid_path)
    except FileExistsError:
        os.close(fd)
        return None
    except OSError:
        # No hard links on this filesystem: O_EXCL on the real name, locked at once.
        os.close(fd)
        try:
            return _new_locked_file(pid_path)
        except FileExistsError:
            return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return fd


def _new_locked_file(path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return fd
