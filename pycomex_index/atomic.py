"""The one way pycomex-index replaces a file: never half-written, never with other permissions.

The new content goes to a temporary file in the target's own folder (same
filesystem, so the rename is atomic), is flushed and fsynced, takes over the
old file's permission bits (and owner, where allowed), and is renamed over the
target with ``os.replace``; then the folder is fsynced so the rename itself
survives a power cut. Readers see the old file or the new one, never a mix.

A process killed mid-write leaves its temporary file behind
(``.NAME.<pid>.<token>.partial``); the next write to the same target removes
temporaries whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from pycomex_index.paths import owner_still_running

TEMPORARY_SUFFIX = ".partial"


def write_atomic(path: str, data: bytes) -> None:
    """Replace (or create) ``path`` with ``data`` atomically, keeping the old file's permissions."""
    with atomic_writer(path) as file:
        file.write(data)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
    """A binary, seekable file that becomes ``path`` when the block ends without an error.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is
    left exactly as it was.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    remove_stale_temporaries(path)
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    temporary = temporary_path(path)
    file = open(temporary, "x+b")  # exclusive create; ``file.name`` is the temporary path
    try:
        yield file
        file.flush()
        _copy_permissions(file.fileno(), existing)
        os.fsync(file.fileno())
        file.close()
        os.replace(temporary, path)
    except BaseException:
        # On a full disk close() raises too (it flushes what is buffered): the temporary must go
        # all the same, or it keeps the disk full. The original error is the one to report.
        with contextlib.suppress(OSError):
            file.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_folder(folder)


def temporary_path(path: str) -> str:
    """Where the new content of ``path`` is written first: a hidden sibling naming this process."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}{TEMPORARY_SUFFIX}")


def _copy_permissions(descriptor: int, existing: os.stat_result | None) -> None:
    if existing is None:
        os.fchmod(descriptor, 0o666 & ~current_umask())
        return
    os.fchmod(descriptor, stat.S_IMODE(existing.st_mode))
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        # Only root (or a group member, for the gid) may do this; otherwise the new file is ours.
        with contextlib.suppress(OSError):
            os.fchown(descriptor, existing.st_uid, existing.st_gid)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: str) -> None:
    """Make a rename or unlink in ``folder`` durable (a no-op where the filesystem cannot)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def remove_stale_temporaries(path: str) -> int:
    """Delete temporaries of ``path`` left by processes that no longer run; returns how many."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}."
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TEMPORARY_SUFFIX)):
            continue
        pid_text = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or owner_still_running(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    return removed


def is_read_only(path: str) -> bool:
    """True when ``path`` may not be written, or is marked read-only for everyone (which even root respects here)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (mode & 0o222) or not os.access(path, os.W_OK)
