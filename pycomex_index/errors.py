"""The library's exception types; the CLI turns each into a one-line error."""

from __future__ import annotations


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


class ExportError(PycomexIndexError):
    """``compress`` cannot write the ZIP: a missing target folder, a target that is a folder, an unreadable file."""


class UndoError(PycomexIndexError):
    """``undo`` cannot run: no such modify in this archive, or it was undone already."""
