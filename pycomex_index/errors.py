"""The library's exception types; the CLI turns each into a one-line error.

Exit codes: 1 for a failure the user acts on, 2 for bad input (a usage
error), and for the index database the codes of BSD's ``sysexits.h``, so a
script can tell "try again later" (75) from "free some space" (74), "the
index was damaged" (65) and "the index cannot be written" (77).
"""

from __future__ import annotations


class UnsafePathError(ValueError):
    """An index row whose path would lead outside the archive root."""


class MissingRowError(RuntimeError):
    """A query the library counts on to return a row returned none (``IndexDatabase.fetch_row``).

    An internal error, not a condition the user can act on: it is not a
    :class:`PycomexIndexError`, so it is reported with its traceback.
    """


class PycomexIndexError(Exception):
    """Base class: anything the user can act on, reported without a traceback."""

    exit_code = 1


class ArchiveNotFoundError(PycomexIndexError):
    """The archive path does not exist or is not a folder."""

    exit_code = 2


class SelectionError(PycomexIndexError):
    """A --select / --group / modify expression that cannot run at all (syntax, unknown name)."""

    exit_code = 2


class IndexUnavailableError(PycomexIndexError):
    """The index cannot be opened or written (permissions, disk full, unsupported URL)."""


class NotAnIndexError(IndexUnavailableError):
    """``--index`` names something that is not a pycomex-index index (a device, a folder, a user's own file).

    Such a file is never renamed or written; the user named the wrong thing.
    """

    exit_code = 2


class IndexBusyError(IndexUnavailableError):
    """Another connection held the index's write lock for longer than the busy timeout (EX_TEMPFAIL)."""

    exit_code = 75


class IndexConflictError(IndexBusyError):
    """PostgreSQL broke a deadlock or a serialization conflict by rolling this transaction back (40P01, 40001).

    Nothing of the transaction was kept, so running it again is safe:
    :meth:`pycomex_index.db.IndexDatabase.run_in_transaction` does, a few
    times; only when every attempt meets a conflict does it reach the user.
    """


class IndexFullError(IndexUnavailableError):
    """The disk (or database quota) is full; the transaction was rolled back (EX_IOERR)."""

    exit_code = 74


class IndexDamagedError(IndexUnavailableError):
    """The database reports damaged pages or a file that is not a database (EX_DATAERR).

    ``location`` is the file (or URL) that reported it, so the caller can set
    a file aside and rebuild it (``store.recover_damaged_index``).
    """

    exit_code = 65

    def __init__(self, message: str, location: str | None = None, *, recovered: bool = False) -> None:
        super().__init__(message)
        self.location = location
        #: The damaged file was already set aside and replaced; nothing is left to mend.
        self.recovered = recovered


class IndexReadOnlyError(IndexUnavailableError):
    """The index file cannot be written (immutable, no write permission, read-only mount) (EX_NOPERM)."""

    exit_code = 77


class ExportError(PycomexIndexError):
    """``compress`` cannot write the ZIP: a missing target folder, a target that is a folder, an unreadable file."""


class UndoError(PycomexIndexError):
    """``undo`` cannot run: no such modify in this archive, or it was undone already."""


class InvalidWatchSettingsError(PycomexIndexError):
    """A watcher setting that cannot work (a zero or negative interval, a negative watch budget)."""

    exit_code = 2

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        #: The :class:`~pycomex_index.watcher.WatchSettings` field at fault, so a caller can name its own option
        #: for it...
        self.field = field
        #: ...and what is wrong with the value, without the field's name.
        self.reason = reason


class DaemonError(PycomexIndexError):
    """The daemon could not be started or stopped."""


class DaemonAlreadyRunningError(DaemonError):
    """Another watcher already serves this archive and index (on this host, or on ``host`` since ``since``)."""

    def __init__(self, root: str, pid: int | None, *, host: str | None = None, since: str | None = None) -> None:
        where = "" if host is None else f" on host {host}"
        since_when = "" if since is None else f", since {since}"
        super().__init__(f"a watcher is already running for {root}{where} (pid {pid}{since_when})")
        self.pid = pid
        self.host = host


class RunOutsideArchiveError(PycomexIndexError):
    """The pycomex plugin's run folder is not below the archive root it names."""
