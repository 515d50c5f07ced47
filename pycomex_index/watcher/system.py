"""What the machine allows and what the archive sits on: the inotify watch budget and the filesystem type.

Both decide whether the watcher can use inotify at all (see
:mod:`pycomex_index.watcher`); neither imports watchdog.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger("pycomex_index.watcher")

MAX_WATCHES_ENV_VARIABLE = "PYCOMEX_INDEX_MAX_WATCHES"
#: Watches left for other programs of the same user (editors, IDEs, sync tools).
WATCH_LIMIT_MARGIN = 1024
#: Most watches taken even when the kernel allows more: each costs ~1 KB of kernel memory and ~0.3 KB here
#: (all share one reader thread), so past this the running runs that do not fit are polled instead.
WATCH_CAP = 65536

#: Filesystems where inotify sees no writes made by other hosts.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "davfs",
        "fuse.davfs2",
    }
)


def default_watch_limit() -> int:
    """How many inotify watches the watcher may use: ``$PYCOMEX_INDEX_MAX_WATCHES``, else the kernel's
    per-user limit minus a margin for other programs, capped at :data:`WATCH_CAP`."""
    configured = os.environ.get(MAX_WATCHES_ENV_VARIABLE)
    if configured:
        try:
            return max(0, int(configured))
        except ValueError:
            logger.warning("ignoring %s=%r: not a whole number", MAX_WATCHES_ENV_VARIABLE, configured)
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as file:
            kernel_limit = int(file.read().strip())
    except (OSError, ValueError):
        kernel_limit = 8192
    return max(0, min(WATCH_CAP, kernel_limit - WATCH_LIMIT_MARGIN))


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``...), from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[1])
        prefix = mount_point.rstrip("/") + "/"
        if target == mount_point or (target + "/").startswith(prefix):
            if best is None or len(mount_point) >= best[0]:
                best = (len(mount_point), fields[2])
    return best[1] if best else None


def is_network_filesystem(path: str) -> bool:
    fs_type = filesystem_type(path)
    return fs_type is not None and fs_type in NETWORK_FILESYSTEMS


def is_alias(path: str, real_root: str) -> bool:
    """A symlink to a folder inside the archive: discovery skips those (the real folder is indexed)."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    return target == real_root or target.startswith(real_root + os.sep)
