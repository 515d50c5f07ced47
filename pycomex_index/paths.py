"""Path and process facts every layer may ask: where an experiment's folder is, what lies inside a root, who still runs.

Low level on purpose: this module imports nothing of the project but its
exception types (``errors``, which imports nothing), so the disk helpers
(``atomic``) can use it as freely as the write commands.
"""

from __future__ import annotations

import os
import re

from pycomex_index.errors import UnsafePathError


def experiment_folder(root: str, rel_path: str) -> str:
    """The absolute folder of the experiment stored as ``rel_path``, refusing any path not plainly below ``root``."""
    rel_path = path_on_disk(rel_path)
    parts = rel_path.split("/")
    # Membership tests, not a loop over the parts, and the joining spelled out (what os.path.join does with a
    # relative path, at half the cost): this runs for every running row a listing judges.
    if rel_path.startswith("/") or "" in parts or "." in parts or ".." in parts:
        raise UnsafePathError(f"{rel_path!r} is not a plain path below the archive root")
    return f"{root}/{rel_path}" if root and not root.endswith("/") else root + rel_path


def folder_on_disk(root: str, rel_path: str) -> str:
    """The real folder of any folder stored (or queued) as ``rel_path``; ``""`` is ``root`` itself."""
    return experiment_folder(root, rel_path) if rel_path else root


def path_in_index(path: str) -> str:
    """How a path below the root is stored and shown: a backslash as ``\\\\``, a byte that is not UTF-8 as ``\\xNN``.

    SQLite text, JSON and a terminal take only valid Unicode, but a folder
    name is any bytes (Python gives non-UTF-8 bytes as lone surrogates). The
    escaping is reversible (:func:`path_on_disk`), so delete, compress and
    modify still reach the real folder; every other path is stored as it is.
    """
    if "\\" not in path and not holds_surrogates(path):
        return path
    return "".join(_PATH_ESCAPES.get(character, character) for character in path)


def holds_surrogates(text: str) -> bool:
    """Whether ``text`` holds lone surrogates, which no UTF-8 encoder (SQLite, orjson, stdout) accepts."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_PATH_ESCAPES = {"\\": "\\\\", **{chr(0xDC00 + byte): f"\\x{byte:02x}" for byte in range(0x80, 0x100)}}
_ESCAPED_PATH_PART = r"\\(\\|x[89a-f][0-9a-f])"


def path_on_disk(rel_path: str) -> str:
    """The real path (as Python's file functions take it) of a path stored by :func:`path_in_index`.

    A path that holds no escape is itself; so is one holding a lone
    surrogate, which can only be a real path already.
    """
    if "\\" not in rel_path or holds_surrogates(rel_path):
        return rel_path
    return re.sub(_ESCAPED_PATH_PART, _unescape_path_part, rel_path)


def _unescape_path_part(match: re.Match[str]) -> str:
    escape = match.group(1)
    return "\\" if escape == "\\" else chr(0xDC00 + int(escape[1:], 16))


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
    fields = _proc_stat_fields(pid)
    if fields is None:
        return True  # no /proc (not Linux): the signal test is all there is
    return fields[:1] not in ([b"Z"], [b"X"])


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat`` field 22); None where unknown.

    With the pid, it names one process: a reused pid has a later start.
    """
    fields = _proc_stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None  # fields[0] is field 3 (the state)
    except (IndexError, ValueError):
        return None


def parent_pid(pid: int) -> int | None:
    """The pid of ``pid``'s parent (``/proc/<pid>/stat`` field 4); None where unknown (gone, or no /proc)."""
    fields = _proc_stat_fields(pid)
    try:
        return int(fields[1]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def _proc_stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces); None without it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()
    except OSError:
        return None


def owner_still_running(pid: int) -> bool:
    """True when ``pid``, found in the name of a file left behind, is this process or another live one: still in use."""
    return pid == os.getpid() or process_is_alive(pid)


#: Overrides the host name runs, leases and heartbeats record and compare (for tests posing as several hosts).
HOSTNAME_ENV_VARIABLE = "PYCOMEX_INDEX_HOSTNAME"


def this_host() -> str:
    """This machine's name (``socket.gethostname()`` on POSIX, without importing socket: 3 ms), or the override."""
    return os.environ.get(HOSTNAME_ENV_VARIABLE) or os.uname().nodename
