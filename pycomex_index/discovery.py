"""Reading one experiment folder safely, and what the index keeps of it.

This is the one place that reads an experiment folder (walking the archive
to find them is :mod:`pycomex_index.walk`'s). Nothing here raises on a bad
experiment: a record carries the error instead, so one broken run never
stops a command.
"""

from __future__ import annotations

import enum
import json
import os
import stat
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from pycomex_index.paths import experiment_folder, holds_surrogates, path_in_index, path_on_disk

METADATA_FILE_NAME = "experiment_meta.json"
#: Appended to an experiment folder's path: concatenated, not os.path.join'ed, in loops over every run.
METADATA_IN_FOLDER = os.sep + METADATA_FILE_NAME
#: The folder inside the archive root where the index lives by default; never an experiment.
INDEX_FOLDER_NAME = ".pycomex_index"

#: Metadata keys too big or too nested to keep in the narrow summary column.
#: Everything else at the top level of experiment_meta.json is in the summary,
#: so an expression that only reads other keys never needs the full document.
DOCUMENT_ONLY_KEYS = frozenset({"description", "parameters", "hooks", "__track__"})


class Outcome(str, enum.Enum):
    """The classification every command shows; a ``str``, so the index and ``--json`` hold the plain values."""

    DONE = "done"  # success
    FAILED = "failed"
    RUNNING = "running"
    ERROR = "error"  # the metadata file could not be read

    # Written as the value in f-strings and str(), on every Python (3.11 changed Enum.__format__).
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


#: Deeper documents are metadata errors. Python's own recursion (repr, ==, the
#: indenting JSON encoder) takes up to three frames a level against a limit of
#: 1,000, and pycomex's json.load fails beyond ~990 levels anyway.
MAX_NESTING_DEPTH = 200
#: orjson reads integers beyond 64 bits as floats; a float this large may have been such an integer.
_INEXACT_FLOAT = 2.0**63
#: The largest integer a float holds exactly (2**53): beyond it, SQL's numbers and Python's ints may disagree.
EXACT_FLOAT_INTEGER = 2**53
#: Times and durations at least this far from zero (the end of year 9999, in seconds) are absurd:
#: the index keeps them out of its number columns, so they spoil no sort, sum or date.
SECONDS_LIMIT = 253402300800.0


class FolderStat(NamedTuple):
    """Where an experiment folder is and the file times that tell whether it changed.

    A named tuple, not a dataclass: a sync makes one per experiment, and tuples are made fastest.
    """

    rel_path: str
    meta_mtime_ns: int
    meta_size: int
    folder_mtime_ns: int


@dataclass(slots=True)
class ExperimentColumns:
    """The ``experiments`` table's columns about one experiment: their one definition.

    The SQL that writes and reads them and the migrations' model
    (:class:`pycomex_index.models.Experiment`, checked by a test) follow these fields.
    """

    rel_path: str
    namespace: str
    name: str | None
    outcome: str
    status: str | None
    has_error: bool | None
    error_type: str | None
    start_time: float | None
    end_time: float | None
    duration: float | None
    parameter_count: int | None
    asset_count: int
    disk_usage: int
    meta_mtime_ns: int
    meta_size: int
    folder_mtime_ns: int
    read_error: str | None
    #: pycomex's own parameters (``__PREFIX__``, ``__DEBUG__``...: see :func:`is_special_parameter`) as a small
    #: JSON object, so that grouping by one of them reads neither experiment_fields nor the whole parameter
    #: document. NULL where the documents need Python's JSON dialect (and for unreadable metadata).
    special_parameters_json: str | None
    #: ``str()`` of the run's ``__PREFIX__`` parameter (:func:`shown_prefix`): ``scan``'s default group, which
    #: SQL groups by off an index covering the figures a group adds up, reading no document. NULL where the run
    #: has no such parameter, or its text cannot be stored (lone surrogates): those rows are grouped as before.
    prefix: str | None


#: The names of :class:`ExperimentColumns`, in table order.
EXPERIMENT_COLUMNS = tuple(column.name for column in fields(ExperimentColumns))


@dataclass(slots=True)
class ExperimentRecord(ExperimentColumns):
    """Everything the index stores about one experiment, read from its folder: the columns and the documents."""

    summary_json: str | None
    parameters_json: str | None
    #: The documents hold what only Python's JSON dialect keeps exactly (see :func:`parse_metadata_document`).
    needs_python: bool = False


#: ``FolderStat.folder_mtime_ns`` when the walk was told not to stat experiment folders.
UNKNOWN_MTIME = -1


def stat_experiment_folder(root: str, rel_path: str) -> FolderStat | None:
    """The current stat of one experiment, or None when it is no longer an experiment."""
    folder = experiment_folder(root, rel_path)
    try:
        folder_stat = os.stat(folder)
        meta_stat = os.stat(os.path.join(folder, METADATA_FILE_NAME))
    except OSError:
        return None
    if not (stat.S_ISDIR(folder_stat.st_mode) and stat.S_ISREG(meta_stat.st_mode)):
        return None
    return FolderStat(rel_path, meta_stat.st_mtime_ns, meta_stat.st_size, folder_stat.st_mtime_ns)


def measure_assets(folder: str) -> tuple[int, int]:
    """Count the files directly in ``folder`` (pycomex's "assets") and sum every file's size below it.

    Symlinks are not followed, so a link out of the experiment never counts
    someone else's data as this experiment's disk usage; the hidden
    ``.NAME.<pid>.<token>.partial`` file a killed atomic write leaves behind is
    no asset either.
    """
    asset_count = 0
    disk_usage = 0
    pending = [(folder, True)]
    while pending:
        current, is_top = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, False))
                elif entry.is_file(follow_symlinks=False):
                    if entry.name.endswith(".partial") and entry.name.startswith("."):
                        continue
                    disk_usage += entry.stat(follow_symlinks=False).st_size
                    if is_top:
                        asset_count += 1
            except OSError:
                continue
    return asset_count, disk_usage


def parse_metadata_document(raw: bytes) -> tuple[dict[str, Any], bool]:
    """Parse the bytes of an experiment_meta.json; raise ValueError with a short reason if unusable.

    Also says whether the document needs Python's JSON dialect: NaN,
    Infinity, integers beyond 64 bits or lone surrogate escapes, as pycomex's
    json module writes and reads them. orjson parses the common document in
    a fraction of the time, but rejects the first and last and turns big
    integers into floats, so such a document is read again by the json module.
    """
    import orjson

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 (byte {error.start})") from None
    needs_python = False
    try:
        metadata = orjson.loads(text)
    except orjson.JSONDecodeError:
        needs_python = True
    if needs_python:
        metadata = _parse_python_json(text)
    if not isinstance(metadata, dict):
        raise ValueError(f"not a JSON object but {type(metadata).__name__}")
    too_deep, inexact = _inspect_values(metadata)
    if too_deep:
        raise ValueError(_TOO_DEEP)
    if inexact and not needs_python:
        metadata, needs_python = _parse_python_json(text), True
    return metadata, needs_python


_TOO_DEEP = f"nested more than {MAX_NESTING_DEPTH} levels deep"


def _parse_python_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def _inspect_values(document: dict[str, Any]) -> tuple[bool, bool]:
    """Whether ``document`` nests deeper than :data:`MAX_NESTING_DEPTH`; whether it holds a float that was a big integer.

    One walk, level by level without recursion, so a deep document cannot
    overflow the stack here; it costs about half of orjson's parse (166
    values of a typical 8 KB document), a third less than a walk with a stack.
    """
    inexact = False
    level: list[Any] = [document]
    depth = 1
    while level:
        if depth > MAX_NESTING_DEPTH:
            return True, inexact
        below = []
        for container in level:
            for value in container.values() if type(container) is dict else container:
                kind = type(value)
                if kind is dict or kind is list:
                    below.append(value)
                elif kind is float and (value >= _INEXACT_FLOAT or value <= -_INEXACT_FLOAT):
                    inexact = True
        level = below
        depth += 1
    return False, inexact


def parse_metadata_bytes(raw: bytes) -> dict[str, Any]:
    """The dict of :func:`parse_metadata_document`."""
    return parse_metadata_document(raw)[0]


def read_metadata_document(folder: str) -> tuple[dict[str, Any], bool]:
    """:func:`parse_metadata_document` of the experiment_meta.json in ``folder`` (a path on disk)."""
    try:
        with open(os.path.join(folder, METADATA_FILE_NAME), "rb") as file:
            raw = file.read()
    except OSError as error:
        raise ValueError(f"cannot read {METADATA_FILE_NAME}: {error.strerror}") from None
    # PostgreSQL text cannot hold NUL: such a run is a metadata error on every backend, never a failed sync.
    if b"\\u0000" in raw:
        raise ValueError(f"{METADATA_FILE_NAME} holds a NUL character (\\u0000), which the index cannot store")
    try:
        return parse_metadata_document(raw)
    except ValueError as error:
        raise ValueError(f"{METADATA_FILE_NAME} is {error}") from None


def read_metadata(folder: str) -> dict[str, Any]:
    """The experiment_meta.json of ``folder`` (a path on disk) as a dict; ValueError with a one-line reason."""
    return read_metadata_document(folder)[0]


def parameter_values(metadata: dict[str, Any]) -> dict[str, Any]:
    """pycomex's ``p``: ``{name: info['value']}`` for every parameter that has a value."""
    parameters = metadata.get("parameters")
    if not isinstance(parameters, dict):
        return {}
    return {name: info["value"] for name, info in parameters.items() if isinstance(info, dict) and "value" in info}


def classify_outcome(metadata: dict[str, Any]) -> Outcome:
    """done (success), running, or failed, by the spec's rule (on pycomex's own ``status`` and ``has_error``)."""
    status = metadata.get("status")
    if status == "done" and not metadata.get("has_error"):
        return Outcome.DONE
    if status == "running":
        return Outcome.RUNNING
    return Outcome.FAILED


def _seconds_or_none(value: Any) -> float | None:
    """A time or duration for the number columns; None for anything but a finite number below :data:`SECONDS_LIMIT`.

    None leaves the value to Python wherever it matters (a selection reads
    the document), and keeps an absurd run out of the archive's figures.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not -SECONDS_LIMIT < value < SECONDS_LIMIT:  # also false for NaN
        return None
    return float(value)


def _text_or_none(value: Any) -> str | None:
    """A string that SQLite can store as it is (a lone surrogate cannot be); None otherwise, left to Python."""
    return value if isinstance(value, str) and not holds_surrogates(value) else None


def _label_or_none(value: Any) -> str | None:
    """A string to show (name, namespace): lone surrogates written as ``\\udXXX`` escapes."""
    if not isinstance(value, str):
        return None
    return _text_or_none(value) or value.encode("utf-8", "backslashreplace").decode("utf-8")


def is_special_parameter(name: str) -> bool:
    """Whether a parameter is one of pycomex's own (``__NAME__``), kept in ``experiments.special_parameters_json``."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def special_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``values`` that :func:`is_special_parameter` names, in their order."""
    return {name: value for name, value in values.items() if is_special_parameter(name)}


#: The parameter ``scan`` groups by unless told otherwise (``p.get('__PREFIX__', 'unknown')``).
PREFIX_PARAMETER = "__PREFIX__"


def shown_prefix(values: dict[str, Any]) -> str | None:
    """``experiments.prefix`` for these parameter values: how ``str()`` shows ``__PREFIX__``, if it can be stored."""
    if PREFIX_PARAMETER not in values:
        return None
    shown = str(values[PREFIX_PARAMETER])
    return None if holds_surrogates(shown) else shown


def namespace_of(rel_path: str) -> str:
    """The namespace a folder lies in: its parent below the archive root."""
    parent = rel_path.rpartition("/")[0]
    return parent


def prefetch_metadata(root: str, folders: list[FolderStat]) -> None:
    """Have the kernel start reading these experiments' metadata files, all at once, before they are read.

    Read one after the other from a cold cache, each file waits for its own
    random read; advised together, the disk serves them many at a time. Reading
    100,000 runs in four processes after a cold walk took 11.0-11.5 s without,
    7.6-8.0 s with. Only advice: a file that cannot be opened is skipped here
    and reported by :func:`read_experiment`.
    """
    advise = getattr(os, "posix_fadvise", None)  # not on every platform
    if advise is None:
        return
    for folder in folders:
        try:
            descriptor = os.open(experiment_folder(root, folder.rel_path) + METADATA_IN_FOLDER, os.O_RDONLY)
        except (OSError, ValueError):
            continue
        try:
            advise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(descriptor)


def read_experiment(root: str, folder_stat: FolderStat) -> ExperimentRecord:
    """Read one experiment folder into a record; a broken file gives an ``error`` record, never an exception."""
    import orjson

    rel_path = folder_stat.rel_path
    if not rel_path.isascii():
        rel_path = path_in_index(path_on_disk(rel_path))  # a real path (the watcher's) becomes its stored form
    folder = experiment_folder(root, rel_path)
    if folder_stat.folder_mtime_ns == UNKNOWN_MTIME:
        try:
            folder_stat = folder_stat._replace(folder_mtime_ns=os.stat(folder).st_mtime_ns)
        except OSError:
            pass
    asset_count, disk_usage = measure_assets(folder)
    record = ExperimentRecord(
        rel_path=rel_path,
        namespace=namespace_of(rel_path),
        name=None,
        outcome=Outcome.ERROR.value,
        status=None,
        has_error=None,
        error_type=None,
        start_time=None,
        end_time=None,
        duration=None,
        parameter_count=None,
        asset_count=asset_count,
        disk_usage=disk_usage,
        meta_mtime_ns=folder_stat.meta_mtime_ns,
        meta_size=folder_stat.meta_size,
        folder_mtime_ns=folder_stat.folder_mtime_ns,
        read_error=None,
        special_parameters_json=None,
        prefix=None,
        summary_json=None,
        parameters_json=None,
    )
    try:
        metadata, needs_python = read_metadata_document(folder)
    except ValueError as error:
        record.read_error = str(error)
        return record

    parameters = metadata.get("parameters")
    has_error = metadata.get("has_error")
    summary = {key: value for key, value in metadata.items() if key not in DOCUMENT_ONLY_KEYS}
    values = parameter_values(metadata)
    if not needs_python:
        try:
            summary_json = orjson.dumps(summary).decode()
            parameters_json = orjson.dumps(values).decode()
            special_json = orjson.dumps(special_parameters(values)).decode()
        except TypeError:  # orjson.JSONEncodeError: nothing it parsed should fail, but the json module is exact
            needs_python = True
    if needs_python:
        # Python's dialect, as pycomex writes it; ASCII, so lone surrogates are stored as escapes.
        summary_json = json.dumps(summary)
        parameters_json = json.dumps(values)

    record.namespace = _label_or_none(metadata.get("namespace")) or record.namespace
    record.name = _label_or_none(metadata.get("name"))
    record.outcome = classify_outcome(metadata).value  # a plain str: every database driver stores it as text
    record.status = _text_or_none(metadata.get("status"))
    record.has_error = has_error if isinstance(has_error, bool) else None
    record.error_type = _text_or_none(metadata.get("error_type"))
    record.start_time = _seconds_or_none(metadata.get("start_time"))
    record.end_time = _seconds_or_none(metadata.get("end_time"))
    record.duration = _seconds_or_none(metadata.get("duration"))
    record.parameter_count = (
        sum(1 for name in parameters if not str(name).startswith("__")) if isinstance(parameters, dict) else 0
    )
    record.summary_json = summary_json
    record.parameters_json = parameters_json
    # Python's dialect is for Python alone: SQL reads such rows' parameters from experiment_fields, in Python.
    record.special_parameters_json = None if needs_python else special_json
    record.prefix = shown_prefix(values)
    record.needs_python = needs_python
    return record
