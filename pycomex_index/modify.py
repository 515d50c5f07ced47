"""``archive modify``: rewrite experiment_meta.json files with user code, reversibly.

The transformation is pure (:func:`transform_metadata`, and
:func:`apply_modification` around it for a file's bytes): ``m`` and ``p`` are
built as in ``--select`` (derived ``m['path']``/``m['name']``, date-aware
times), the ``--modify-parameters`` and ``--modify-metadata`` code run on
them, and what changed in ``p`` is mapped back into
``parameters[NAME]['value']``: changed values, added parameters (a new
entry), removed ones (entry removed) and renames (``p['new'] =
p.pop('old')`` moves the old entry, with its type and description, to the
new name). Derived keys are written only when the code changed them, and
times are written as plain numbers.

:func:`modify_experiments` writes through, one experiment at a time: journal
the file's current content under the run's id (index,
:mod:`pycomex_index.journal`), replace the file atomically keeping its
permissions (disk), re-read it into the index (index).
:mod:`pycomex_index.undo` puts journaled contents back.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pycomex_index.atomic import is_read_only, write_atomic
from pycomex_index.discovery import METADATA_FILE_NAME, parameter_values, parse_metadata_bytes
from pycomex_index.journal import ModifyJournal
from pycomex_index.operations import SelectedExperiment, reindex_experiment
from pycomex_index.paths import UnsafePathError, experiment_folder
from pycomex_index.selection import TIME_KEYS, CompiledExpression, PosixTime, build_metadata, evaluation_globals
from pycomex_index.store import ArchiveIndex

MODIFIED, UNCHANGED, GONE, FAILED = "modified", "unchanged", "gone", "failed"
#: The metadata keys ``m`` gains when the file lacks them; never written back unless the code changed them.
DERIVED_KEYS = ("path", "name")


class _Absent:
    """Marks a key or parameter that does not exist on one side of a change."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed value: a parameter (``kind='parameter'``, ``field`` set for entry fields other than
    the value) or a top-level metadata key (``kind='metadata'``). ``before``/``after`` may be ABSENT."""

    kind: str
    name: str
    before: Any
    after: Any
    renamed_from: str | None = None
    field: str | None = None


@dataclass
class ExperimentModification:
    """The outcome for one experiment: modified (or would be, on a dry run), unchanged, gone, or failed."""

    rel_path: str
    status: str
    changes: list[FieldChange] = field(default_factory=list)
    error: str | None = None
    run_id: int | None = None


@dataclass(frozen=True)
class ModifyCode:
    """The compiled ``--modify-parameters`` / ``--modify-metadata`` code (either may be None)."""

    parameters: CompiledExpression | None
    metadata: CompiledExpression | None


class ModificationFailed(Exception):
    """The code raised, or produced something that cannot be written; the file stays untouched."""


# ------------------------------------------------------------------------------------- writing through


def modify_experiments(
    index: ArchiveIndex,
    targets: Iterable[SelectedExperiment],
    code: ModifyCode,
    *,
    dry_run: bool = False,
) -> Iterator[ExperimentModification]:
    """Apply ``code`` to each target and yield the outcome as it happens.

    Unless ``dry_run``, changed files are journaled (one ``modify_runs`` row
    for this call, created when the first file changes) and rewritten; a dry
    run reads files and touches neither the disk nor the index.
    """
    journal = None
    if not dry_run:
        journal = ModifyJournal(
            index,
            parameters_code=code.parameters.source if code.parameters else None,
            metadata_code=code.metadata.source if code.metadata else None,
        )
    try:
        for target in targets:
            yield _modify_one(index, target, code, journal)
    finally:
        if journal is not None:
            journal.finish()


def _modify_one(
    index: ArchiveIndex, target: SelectedExperiment, code: ModifyCode, journal: ModifyJournal | None
) -> ExperimentModification:
    rel_path = target.rel_path
    if target.read_error:
        return ExperimentModification(
            rel_path, FAILED, error=f"metadata unreadable ({target.read_error}); left untouched"
        )
    try:
        folder = experiment_folder(index.root, rel_path)
        metadata_path = os.path.join(folder, METADATA_FILE_NAME)
        with open(metadata_path, "rb") as file:
            previous = file.read()
        new_content, changes = apply_modification(previous, code, path=folder, namespace=target.namespace)
    except UnsafePathError as error:
        return ExperimentModification(rel_path, FAILED, error=str(error))
    except FileNotFoundError:
        return _gone(index, rel_path)
    except OSError as error:
        return ExperimentModification(rel_path, FAILED, error=f"cannot read {METADATA_FILE_NAME}: {error.strerror}")
    except ModificationFailed as error:
        return ExperimentModification(rel_path, FAILED, error=str(error))
    if new_content is None:
        return ExperimentModification(rel_path, UNCHANGED)
    if journal is None:
        return ExperimentModification(rel_path, MODIFIED, changes)
    if is_read_only(metadata_path):
        return ExperimentModification(
            rel_path, FAILED, changes, error=f"{METADATA_FILE_NAME} is read-only; left untouched"
        )
    run_id = journal.record(rel_path, previous, new_content)
    try:
        write_atomic(metadata_path, new_content)
    except OSError as error:
        journal.forget(rel_path)
        if not os.path.lexists(metadata_path):
            return _gone(index, rel_path)
        return ExperimentModification(
            rel_path,
            FAILED,
            changes,
            error=f"cannot write {METADATA_FILE_NAME}: {error.strerror or error}; left untouched",
        )
    reindex_experiment(index, rel_path)
    return ExperimentModification(rel_path, MODIFIED, changes, run_id=run_id)


def _gone(index: ArchiveIndex, rel_path: str) -> ExperimentModification:
    """A selected run that went before it was written (another host deleted it): nothing to modify, no failure.

    Its index row goes too, so a query right after the modify is correct.
    """
    reindex_experiment(index, rel_path)
    return ExperimentModification(rel_path, GONE, error="no longer exists")


# ------------------------------------------------------------------------------ the transformation (pure)


def apply_modification(
    raw: bytes, code: ModifyCode, *, path: str, namespace: str
) -> tuple[bytes | None, list[FieldChange]]:
    """Run the code on one experiment_meta.json's bytes: the new bytes (None when nothing changed) and the changes.

    Pure: reads and writes nothing. Raises :class:`ModificationFailed` when
    the file is not JSON, the code raises, or the result cannot be encoded.
    """
    try:
        original = parse_metadata_bytes(raw)
        working_copy = parse_metadata_bytes(raw)  # parsing again is the cheapest deep copy
    except ValueError as error:
        raise ModificationFailed(f"{METADATA_FILE_NAME} is {error}; left untouched") from None
    transformation = transform_metadata(original, code, path=path, namespace=namespace, working_copy=working_copy)
    try:
        new_text = _as_pycomex_json(transformation.metadata)
    except (TypeError, ValueError, OverflowError) as error:
        raise ModificationFailed(f"{_unencodable(transformation.metadata, error)}; left untouched") from None
    if new_text == _as_pycomex_json(original):
        return None, []
    return new_text.encode("utf-8"), transformation.changes


@dataclass(frozen=True)
class Transformation:
    """What the code made of one experiment's metadata.

    ``metadata`` is the new content as it would be saved (times as plain
    numbers, derived keys only where the code changed them); ``renames`` maps
    each renamed parameter's new name to its old one. ``changes`` (before →
    after) is worked out when first asked for: writing does not need it.
    """

    original: dict[str, Any]
    metadata: dict[str, Any]
    renames: dict[str, str]

    @cached_property
    def changes(self) -> list[FieldChange]:
        return _changes(self.original, self.metadata, self.renames)


def transform_metadata(
    original: dict[str, Any],
    code: ModifyCode,
    *,
    path: str,
    namespace: str,
    working_copy: dict[str, Any] | None = None,
) -> Transformation:
    """Run the code on an experiment's metadata dict; ``original`` itself is never changed.

    Pure: no disk, no index. ``path`` and ``namespace`` give the derived
    ``m['path']``/``m['name']``. The code works on ``working_copy`` (which it
    may change), an independent copy of ``original`` that a caller holding the
    file's bytes makes cheaper than ``copy.deepcopy``, the default. Raises
    :class:`ModificationFailed` when the code raises or leaves something no
    file can hold.
    """
    metadata = copy.deepcopy(original) if working_copy is None else working_copy
    file_keys = set(metadata)
    metadata = build_metadata(metadata, path=path, namespace=namespace)
    derived = {key: metadata[key] for key in DERIVED_KEYS if key not in file_keys}
    given_times = {key: metadata[key] for key in TIME_KEYS if isinstance(metadata.get(key), PosixTime)}
    parameters = _TrackedParameters(parameter_values(metadata))
    namespace_globals = evaluation_globals(metadata, parameters)
    renames: dict[str, str] = {}
    # As in pycomex, p is saved into m after the parameter code, so the metadata code sees the new values;
    # p is saved again after the metadata code, which may change it too.
    for what, compiled in (("--modify-parameters", code.parameters), ("--modify-metadata", code.metadata)):
        if compiled is None:
            continue
        given_parameters = dict(parameters)
        if isinstance(parameters, _TrackedParameters):
            parameters.popped.clear()
        try:
            exec(compiled.code, namespace_globals)
        except (Exception, SystemExit) as error:
            raise ModificationFailed(f"{what} raised {type(error).__name__}: {error}; left untouched") from None
        metadata = namespace_globals["m"] if isinstance(namespace_globals.get("m"), dict) else metadata
        parameters = namespace_globals["p"] if isinstance(namespace_globals.get("p"), dict) else parameters
        popped = parameters.popped if isinstance(parameters, _TrackedParameters) else set()
        for new, old in _map_parameters_back(metadata, given_parameters, parameters, popped).items():
            renames[new] = renames.pop(old, old)

    for key, value in derived.items():
        if key in metadata and _same_value(metadata[key], value):
            del metadata[key]
    for key, value in given_times.items():
        if metadata.get(key) is value:
            metadata[key] = original[key]
    try:
        metadata = _plain(metadata)
    except RecursionError:
        raise ModificationFailed(
            "m holds itself (or is nested too deep), which JSON cannot store; left untouched"
        ) from None
    return Transformation(original, metadata, renames)


def _as_pycomex_json(metadata: dict[str, Any]) -> str:
    """The text of an experiment_meta.json as pycomex writes it (``save_metadata``)."""
    return json.dumps(metadata, indent=4, sort_keys=True)


class _TrackedParameters(dict):
    """``p`` for modify code: a plain dict that remembers which names were ``pop``-ed (to see renames)."""

    __slots__ = ("popped",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.popped: set[str] = set()

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self.popped.add(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        self.popped.add(key)
        return key, value


#: Values Python shares between unrelated places (``None``, ``True``, small ints, short strings), so
#: that holding the same object says nothing about where a value came from.
_SHARED_TYPES = (type(None), bool, int, str)


def _map_parameters_back(
    metadata: dict[str, Any], given: dict[str, Any], final: dict[str, Any], popped: set[str]
) -> dict[str, str]:
    """Write ``p``'s changes into ``metadata['parameters']``; returns the renames ``{new: old}``.

    A new parameter holding the very object a vanished one held is a rename
    when that one was ``pop``-ed (``p['new'] = p.pop('old')``) or its value
    is not of a type Python shares (``p['new'] = p['old']; del p['old']``
    with a float or a list). A value mutated in place is already in the
    entry it came from; a rebound value that encodes the same is no change.
    """
    removed = [name for name in given if name not in final]
    added = [name for name in final if name not in given]
    if not removed and not added and all(final[name] is given[name] for name in given):
        return {}
    entries = metadata.get("parameters")
    if entries is None:
        entries = metadata["parameters"] = {}
    if not isinstance(entries, dict):
        raise ModificationFailed("m['parameters'] is not a dict, so p's changes cannot be saved; left untouched")
    renames: dict[str, str] = {}
    unclaimed = list(removed)
    for new in added:
        old = next(
            (
                name
                for name in unclaimed
                if given[name] is final[new] and (name in popped or not isinstance(given[name], _SHARED_TYPES))
            ),
            None,
        )
        if old is not None:
            unclaimed.remove(old)
            renames[new] = old
    for name in final:
        if name in given and final[name] is given[name]:
            continue
        old = renames.get(name)
        if old is not None and isinstance(entries.get(old), dict):
            entry = entries.pop(old)
            entry["name"] = name
        elif isinstance(entries.get(name), dict):
            entry = entries[name]
        else:
            entry = {"name": name, "type": type(final[name]).__name__, "description": "", "usable": True}
        if not _json_equal(entry.get("value", ABSENT), final[name]):
            entry["usable"] = True  # as pycomex marks every value it could write as JSON
        entry["value"] = final[name]
        entries[name] = entry
    for name in unclaimed:
        entries.pop(name, None)
    return renames


def _same_value(left: Any, right: Any) -> bool:
    return type(left) is type(right) and left == right


def _plain(value: Any) -> Any:
    """The value with every PosixTime turned back into a plain float, so the file holds numbers."""
    if isinstance(value, PosixTime):
        return float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def _unencodable(metadata: dict[str, Any], error: BaseException) -> str:
    """Name the value that JSON cannot hold: ``p['X'] = {1, 2} is not JSON-encodable (set)``."""
    entries = metadata.get("parameters")
    suspects: list[tuple[str, Any]] = []
    if isinstance(entries, dict):
        suspects += [
            (f"p[{name!r}]", entry.get("value") if isinstance(entry, dict) else entry)
            for name, entry in entries.items()
        ]
    suspects += [(f"m[{key!r}]", value) for key, value in metadata.items() if key != "parameters"]
    for label, value in suspects:
        try:
            json.dumps(value, sort_keys=True)
        except (TypeError, ValueError, OverflowError):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return f"{label} = {shown} is not JSON-encodable ({type(value).__name__})"
    return f"the metadata cannot be written as JSON: {error}"


def _json_equal(left: Any, right: Any) -> bool:
    try:
        return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)
    except (TypeError, ValueError):
        return left == right


def _parameter_entries(metadata: dict[str, Any]) -> dict[str, Any]:
    parameters = metadata.get("parameters")
    return parameters if isinstance(parameters, dict) else {}


def _changes(original: dict[str, Any], final: dict[str, Any], renames: dict[str, str]) -> list[FieldChange]:
    """Every changed parameter value or entry field, then every changed metadata key, in file order."""
    changes: list[FieldChange] = []
    before_entries = _parameter_entries(original)
    after_entries = _parameter_entries(final)
    new_name_of = {old: new for new, old in renames.items()}
    # File order; a renamed parameter shows where its old name was, added ones come last.
    order = list(dict.fromkeys([new_name_of.get(name, name) for name in before_entries] + list(after_entries)))
    for name in order:
        old_name = renames.get(name, name)
        before_entry = before_entries.get(old_name, ABSENT)
        after_entry = after_entries.get(name, ABSENT)
        before_value = before_entry.get("value", ABSENT) if isinstance(before_entry, dict) else before_entry
        after_value = after_entry.get("value", ABSENT) if isinstance(after_entry, dict) else after_entry
        renamed_from = old_name if old_name != name and before_entry is not ABSENT else None
        if renamed_from or not _json_equal(before_value, after_value):
            changes.append(FieldChange("parameter", name, before_value, after_value, renamed_from))
        if isinstance(before_entry, dict) and isinstance(after_entry, dict):
            for key in list(before_entry) + [key for key in after_entry if key not in before_entry]:
                if key in ("value", "usable") or (key == "name" and renamed_from):
                    continue
                if not _json_equal(before_entry.get(key, ABSENT), after_entry.get(key, ABSENT)):
                    changes.append(
                        FieldChange(
                            "parameter", name, before_entry.get(key, ABSENT), after_entry.get(key, ABSENT), field=key
                        )
                    )
    for key in list(original) + [key for key in final if key not in original]:
        if key == "parameters":
            continue
        before, after = original.get(key, ABSENT), final.get(key, ABSENT)
        if not _json_equal(before, after):
            changes.append(FieldChange("metadata", key, before, after))
    return changes
