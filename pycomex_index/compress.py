"""``archive compress``: selected experiments into one ZIP, in pycomex's layout, recorded in the index.

The ZIP holds ``results/<path below the archive root>/<files and subfolders>``
exactly like ``pycomex archive compress`` writes it (the top folder is the
literal ``results``, whatever the archive folder is called), so ``pycomex
reproduce`` and a plain unzip give back the same tree.

It is written through :func:`pycomex_index.atomic.atomic_writer`: a hidden
temporary file beside the target, renamed over it only when complete, so an
error, Ctrl-C or a kill never leaves a partial ZIP under the requested name
and an existing file of that name stays untouched until the new one is whole
(and is replaced at all only when the caller says so; never inside the archive).
The export (path, time, size, SHA-256, member experiments) is then recorded
(:mod:`pycomex_index.exports`), which is how ``delete`` knows what was never exported.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pycomex_index.atomic import atomic_writer
from pycomex_index.discovery import METADATA_FILE_NAME
from pycomex_index.errors import ExportError
from pycomex_index.exports import record_export
from pycomex_index.operations import SelectedExperiment
from pycomex_index.paths import UnsafePathError, experiment_folder, is_within
from pycomex_index.store import ArchiveIndex

logger = logging.getLogger("pycomex_index")

#: The top folder inside the ZIP, as pycomex writes it.
ZIP_ROOT = "results"
_HASH_CHUNK = 1 << 20
#: Errors of writing the ZIP that ``ZipFile.write`` raises mixed with those of reading a source file.
_ZIP_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class ExportResult:
    """A ZIP that was written and recorded."""

    export_id: int
    zip_path: str
    size: int
    sha256: str
    members: list[str]
    skipped: list[str] = field(default_factory=list)


def compress_experiments(
    index: ArchiveIndex,
    targets: Sequence[SelectedExperiment],
    zip_path: str,
    *,
    overwrite: bool = False,
    on_experiment: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write ``targets`` into the ZIP at ``zip_path`` (atomically) and record the export in the index.

    An existing file at ``zip_path`` is replaced only with ``overwrite``; a
    path inside the archive never is (see :func:`check_export_target`).
    ``on_experiment(rel_path)`` is called as each experiment is added,
    ``on_progress(done, total)`` after it. Problems with one file (a symlink
    out of the experiment, a socket) are warnings; a file that cannot be read
    fails the whole export, because a backup that silently lacks files is worse
    than none.
    """
    import zipfile

    root = index.root
    target = check_export_target(root, zip_path)
    zip_path = target.path
    if target.exists and not overwrite:
        raise ExportError(f"{zip_path} already exists; nothing was written")
    members: list[tuple[str, int]] = []
    skipped: list[str] = []
    with atomic_writer(zip_path) as file:
        not_to_pack = {os.path.realpath(zip_path), os.path.realpath(file.name)}
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, strict_timestamps=False) as archive:
            for done, experiment in enumerate(targets, start=1):
                meta_mtime_ns = _add_experiment(archive, root, experiment.rel_path, not_to_pack, on_experiment)
                if meta_mtime_ns is None:
                    skipped.append(experiment.rel_path)
                else:
                    members.append((experiment.rel_path, meta_mtime_ns))
                if on_progress:
                    on_progress(done, len(targets))
        file.flush()
        size = file.tell()
        sha256 = _sha256_of(file)
    export_id = record_export(index, zip_path, size, sha256, members)
    return ExportResult(export_id, zip_path, size, sha256, [rel_path for rel_path, _ in members], skipped)


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """Where a ZIP may be written (absolute path), and whether a file of that name is there already."""

    path: str
    exists: bool


def check_export_target(root: str, zip_path: str) -> ExportTarget:
    """Check that a ZIP may be written at ``zip_path``; raise :class:`ExportError` with the reason if not.

    A path inside the archive is refused, however it is spelled (``..``, a
    symlinked folder or file leading in): replacing a file there would destroy
    an experiment's own file (its experiment_meta.json, say) or the index.
    """
    zip_path = os.path.abspath(os.path.expanduser(zip_path))
    folder = os.path.dirname(zip_path)
    if is_within(zip_path, os.path.abspath(root)) or is_within(os.path.realpath(zip_path), os.path.realpath(root)):
        raise ExportError(f"cannot write {zip_path}: it lies inside the archive {root}; write the ZIP outside it")
    if not os.path.isdir(folder):
        raise ExportError(f"cannot write {zip_path}: the folder {folder} does not exist")
    if os.path.isdir(zip_path):
        raise ExportError(f"cannot write {zip_path}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write {zip_path}: the folder {folder} is not writable")
    return ExportTarget(zip_path, os.path.lexists(zip_path))


def _add_experiment(archive, root: str, rel_path: str, not_to_pack: set[str], on_experiment) -> int | None:
    """Add one experiment's files; returns its experiment_meta.json mtime, or None when it is gone."""
    try:
        folder = experiment_folder(root, rel_path)
    except UnsafePathError as error:
        logger.warning("skipped %s: %s", rel_path, error)
        return None
    try:
        meta_mtime_ns = os.stat(os.path.join(folder, METADATA_FILE_NAME)).st_mtime_ns
    except OSError:
        logger.warning("skipped %s/%s: it is no longer an experiment", ZIP_ROOT, rel_path)
        return None
    if on_experiment:
        on_experiment(rel_path)
    prefix = f"{ZIP_ROOT}/{rel_path}"
    for kind, source, name in _experiment_entries(os.path.realpath(folder), prefix, not_to_pack):
        try:
            if kind == "dir":
                archive.writestr(name + "/", b"")
            else:
                archive.write(source, name)
        except OSError as error:
            if error.errno in _ZIP_FULL_ERRNOS:
                raise  # the ZIP's disk is full: not this file's fault, and the CLI says so plainly
            raise ExportError(f"cannot read {source}: {error.strerror or error}") from None
    return meta_mtime_ns


def _experiment_entries(top: str, prefix: str, not_to_pack: set[str]) -> Iterator[tuple[str, str, str]]:
    """``(kind, source path, name in the ZIP)`` for every file (and empty folder) of one experiment.

    Walks without following symlinks out of the experiment: a link whose
    target lies inside it is packed as the file or folder it points to; one
    that points outside, dangles or loops is skipped with a warning.
    """
    # Each pending folder carries the real folders above it, so a link back up is seen as a loop.
    pending: list[tuple[str, str, frozenset[str]]] = [(top, prefix, frozenset({top}))]
    while pending:
        current, name, ancestors = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            raise ExportError(f"cannot read the folder {current}: {error.strerror or error}") from None
        subfolders = []
        files = 0
        for entry in entries:
            entry_name = f"{name}/{entry.name}"
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not is_within(target, top):
                    logger.warning(
                        "skipped the symlink %s -> %s: it points outside the experiment",
                        entry_name,
                        os.readlink(entry.path),
                    )
                    continue
                if target in ancestors:
                    logger.warning("skipped the symlink %s: it loops back to a folder above it", entry_name)
                    continue
                source = target
            else:
                source = entry.path
            if source in not_to_pack:
                continue
            try:
                source_stat = os.stat(source)
            except OSError:
                logger.warning("skipped %s: its symlink leads nowhere", entry_name)
                continue
            if stat.S_ISDIR(source_stat.st_mode):
                subfolders.append((source, entry_name, ancestors | {source}))
            elif stat.S_ISREG(source_stat.st_mode):
                files += 1
                yield "file", source, entry_name
            else:
                logger.warning("skipped %s: not a regular file", entry_name)
        if not files and not subfolders and name != prefix:
            yield "dir", current, name  # an empty folder still unpacks as one
        # Files of a folder first, then its subfolders in name order (as os.walk, which pycomex uses).
        pending.extend(reversed(subfolders))


def _sha256_of(file) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
