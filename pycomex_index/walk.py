"""Walking an archive: every folder below its root, each with the experiments directly in it.

The walk finds experiments the way pycomex does (a folder holding
experiment_meta.json is one, and is not descended into) and stats each one's
metadata file, so that a sync can tell what changed without reading any.
Reading an experiment folder is :mod:`pycomex_index.discovery`'s part.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from pycomex_index.discovery import INDEX_FOLDER_NAME, METADATA_IN_FOLDER, UNKNOWN_MTIME, FolderStat
from pycomex_index.paths import path_in_index, path_on_disk


class FolderListing(NamedTuple):
    """The experiments directly in one folder of the archive ("" is the root)."""

    rel_dir: str
    experiments: list[FolderStat]
    #: The inode number of each experiment folder, in the order of ``experiments``: reading folders in inode
    #: order reads the disk's inode tables and files in the order they were written (see the first build).
    inodes: list[int]


# Statting "run/experiment_meta.json" relative to an open namespace folder spares the kernel
# resolving the whole path again for each of thousands of runs (about 15% of a walk).
_STAT_RELATIVE = os.stat in os.supports_dir_fd and os.scandir in os.supports_fd

#: Threads statting the entries of a big folder whose disk is cold. Then each stat waits for two or three random
#: reads, and a virtual disk serves eight at a time about three times as fast as one: a cold walk of 100,000
#: runs took 13 s in one thread, 4.5-5 s in eight (4 and 16 were slower).
WALK_THREADS = 8
#: Entries one walk thread stats per task. A folder's entries are statted this many times WALK_THREADS at a
#: time, so a walk holds at most that many directory entries; smaller folders are statted in the walking thread.
WALK_CHUNK = 256
#: Seconds per entry above which the first chunk of a batch tells a cold disk, and the rest goes to the threads.
#: From the page cache a stat takes a few microseconds and threads only contend for the GIL: a warm walk of
#: 100,000 runs took 0.54 s in one thread and 1.1-1.2 s in eight; from a cold disk one takes ~130 us.
COLD_STAT_SECONDS = 20e-6


def iter_folder_listings(root: str, *, folder_times: bool = True) -> Iterator[FolderListing]:
    """Walk the archive below ``root`` the way pycomex finds experiments, one folder at a time.

    Every folder below the root is visited; a folder holding
    experiment_meta.json is an experiment and is not descended into. Each
    visited folder yields its experiments (possibly none), in the order the
    folder lists them.
    ``folder_times=False`` skips the stat of each experiment folder (its
    mtime tells whether assets changed) and halves the system calls of a walk;
    ``folder_mtime_ns`` is then :data:`UNKNOWN_MTIME`.

    Symlinks to folders outside the archive are followed (a symlinked
    experiment is still an experiment), each real folder once, so a link
    cycle ends; links to folders inside the archive are aliases and are skipped.
    """
    with _EntryStatter(folder_times) as statter:
        yield from _walk(root, statter)


def _walk(root: str, statter: _EntryStatter) -> Iterator[FolderListing]:
    seen: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)
    pending = [""]
    batch_size = WALK_CHUNK * WALK_THREADS
    while pending:
        rel_dir = pending.pop()
        folder = f"{root}/{path_on_disk(rel_dir)}" if rel_dir else root
        prefix = f"{rel_dir}/" if rel_dir else ""
        listing = FolderListing(rel_dir, [], [])
        subfolders: list[str] = []
        try:
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if _STAT_RELATIVE else None
        except OSError:
            continue
        try:
            try:
                scan = os.scandir(folder if folder_fd is None else folder_fd)
            except OSError:
                continue
            # A bounded batch of entries at a time, not a list of them all: a namespace of 200,000 runs held that
            # many entries and their cached stats at once, tens of MB of a first build's peak memory.
            batch: list[tuple[os.DirEntry, os.stat_result | None]] = []
            with scan:
                try:
                    for entry in scan:
                        try:
                            if not entry.is_dir() or (not rel_dir and entry.name == INDEX_FOLDER_NAME):
                                continue
                            link_stat = entry.stat() if entry.is_symlink() else None
                        except OSError:
                            continue
                        if link_stat is not None:
                            # A link to a folder inside the archive is an alias of something walked anyway;
                            # a link out of it is followed once per real folder, so cycles end.
                            target = os.path.realpath(f"{folder}/{entry.name}")
                            identity = (link_stat.st_dev, link_stat.st_ino)
                            if target == real_root or target.startswith(real_root + os.sep) or identity in seen:
                                continue
                            seen.add(identity)
                        batch.append((entry, link_stat))
                        if len(batch) >= batch_size:
                            _add_statted(statter.stat(folder, folder_fd, batch), prefix, listing, subfolders)
                            batch = []
                    _add_statted(statter.stat(folder, folder_fd, batch), prefix, listing, subfolders)
                except OSError:
                    continue  # the folder failed midway: skipped whole, as one that cannot be listed
        finally:
            if folder_fd is not None:
                os.close(folder_fd)
        pending.extend(subfolders)
        yield listing


#: A directory entry with the stat of its folder (when taken) and of its experiment_meta.json (None: none).
_StattedEntry = tuple[os.DirEntry, "os.stat_result | None", "os.stat_result | None"]


def _add_statted(statted: list[_StattedEntry], prefix: str, listing: FolderListing, subfolders: list[str]) -> None:
    """Sort statted entries of a folder into its experiments (``listing``) and the folders to walk next."""
    for entry, folder_stat, meta_stat in statted:
        name = entry.name
        if not name.isascii() or "\\" in name:
            name = path_in_index(name)
        rel_path = prefix + name
        if meta_stat is not None and stat.S_ISREG(meta_stat.st_mode):
            folder_mtime_ns = folder_stat.st_mtime_ns if folder_stat is not None else UNKNOWN_MTIME
            listing.experiments.append(FolderStat(rel_path, meta_stat.st_mtime_ns, meta_stat.st_size, folder_mtime_ns))
            listing.inodes.append(entry.inode())  # from the directory entry itself: no system call
        else:
            subfolders.append(rel_path)


class _EntryStatter:
    """Stats a folder's entries (the folder itself, its experiment_meta.json), in threads when there are many.

    The threads are made when a walk first meets a big folder and stopped when
    the walk ends, so a walk of a small archive (a read command's) makes none.
    """

    def __init__(self, folder_times: bool) -> None:
        self.folder_times = folder_times
        self.threads: Any = None

    def __enter__(self) -> _EntryStatter:
        return self

    def __exit__(self, *_: object) -> None:
        if self.threads is not None:
            self.threads.shutdown(wait=True, cancel_futures=True)

    def stat(
        self, folder: str, folder_fd: int | None, entries: list[tuple[os.DirEntry, os.stat_result | None]]
    ) -> list[_StattedEntry]:
        """Each entry with its folder's stat (a link's, or when asked for folder times) and its metadata file's.

        An entry that can no longer be statted is left out; the metadata stat is None where there is none.
        The first chunk is statted here, timed: the rest goes to the threads only if the disk proved cold.
        """
        started = time.perf_counter()
        statted = self._stat_chunk(folder, folder_fd, entries[:WALK_CHUNK])
        rest = entries[WALK_CHUNK:]
        if not rest:
            return statted
        if time.perf_counter() - started < COLD_STAT_SECONDS * WALK_CHUNK:
            return statted + self._stat_chunk(folder, folder_fd, rest)
        if self.threads is None:
            from concurrent.futures import ThreadPoolExecutor

            self.threads = ThreadPoolExecutor(WALK_THREADS, thread_name_prefix="pycomex-index-walk")
        chunks = [rest[at : at + WALK_CHUNK] for at in range(0, len(rest), WALK_CHUNK)]
        for chunk in self.threads.map(lambda chunk: self._stat_chunk(folder, folder_fd, chunk), chunks):
            statted += chunk
        return statted

    def _stat_chunk(
        self, folder: str, folder_fd: int | None, entries: list[tuple[os.DirEntry, os.stat_result | None]]
    ) -> list[_StattedEntry]:
        stat_path = os.stat
        folder_times = self.folder_times
        statted: list[_StattedEntry] = []
        for entry, folder_stat in entries:
            try:
                if folder_stat is None and folder_times:
                    folder_stat = entry.stat()
            except OSError:
                continue
            try:
                if folder_fd is not None:
                    meta_stat: os.stat_result | None = stat_path(entry.name + METADATA_IN_FOLDER, dir_fd=folder_fd)
                else:
                    meta_stat = stat_path(entry.path + METADATA_IN_FOLDER)
            except OSError:
                meta_stat = None
            statted.append((entry, folder_stat, meta_stat))
        return statted


def listing_digest(experiments: list[FolderStat]) -> str:
    """A fingerprint of which experiments a folder holds (one at least) and their metadata files' mtime and size.

    Equal digests mean equal stamps: a 128-bit BLAKE2 of an exact encoding
    (paths joined by NUL, which no path contains, then the numbers as 64-bit
    integers). The order of ``experiments`` counts, so a folder listed in
    another order only looks changed, which costs a comparison, never a wrong
    answer. Transposed with ``zip`` and packed with ``array``, so that the
    work per experiment happens in C.
    """
    import hashlib
    from array import array

    rel_paths, mtimes, sizes, _ = zip(*experiments, strict=True)
    digest = hashlib.blake2b("\0".join(rel_paths).encode("utf-8", "surrogateescape"), digest_size=16)
    digest.update(array("q", mtimes).tobytes())
    digest.update(array("q", sizes).tobytes())
    return digest.hexdigest()
