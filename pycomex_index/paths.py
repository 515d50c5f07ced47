"""Path and process facts every layer may ask: where an experiment's folder is, what lies inside a root, who still runs.

Low level on purpose: this module imports nothing of the project, so the
disk helpers (``atomic``) can use it as freely as the write commands.
"""

from __future__ import annotations

import os


class UnsafePathError(ValueError):
    """An index row whose path would lead outside the archive root."""


def experiment_folder(root: str, rel_path: str) -> str:
    """The absolute folder of an experiment, refusing any path that is not plainly below ``root``."""
    parts = rel_path.split("/")
    if os.path.isabs(rel_path) or any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"{rel_path!r} is not a plain path below the archive root")
    return os.path.join(root, *parts)


def is_within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both already resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def process_is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a killed process nobody has reaped yet (a zombie) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return True  # no /proc (not Linux): the signal test is all there is
    return state not in ([b"Z"], [b"X"])


def owner_still_running(pid: int) -> bool:
    """True when ``pid``, found in the name of a file left behind, is this process or another live one: still in use."""
    return pid == os.getpid() or process_is_alive(pid)
