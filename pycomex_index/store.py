"""Where the index lives, opening it, and keeping its schema at the shipped revision.

An index is opened for one archive root. Opening it (1) finds the database
(``--index`` / ``PYCOMEX_INDEX``, else ``<archive>/.pycomex_index/index.sqlite3``,
else a per-archive file in the user cache dir when the archive is read-only),
(2) refuses anything that is not a regular file, (3) sets aside a file that
SQLite reports damaged (``SQLITE_CORRUPT``/``SQLITE_NOTADB``) when it was our
index (:func:`is_our_index_file`), keeping the records a rebuild cannot
recreate (:func:`salvage_records`), (4) compares the stored Alembic revision
with :data:`HEAD_REVISION` and only imports Alembic when they differ, (5)
registers the archive root. Damage reported later, in the middle of a query,
is mended by :func:`recover_damaged_index`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pycomex_index.migrations as migrations
from pycomex_index.archives import register_archive
from pycomex_index.bulk_load import mend_interrupted_bulk_load
from pycomex_index.db import (
    SQLITE_DAMAGE_CODES,
    IndexDatabase,
    SqlAlchemyDatabase,
    SqliteFileDatabase,
    database_reason,
    masked_url,
    sqlite_result_code,
    translate_database_error,
)
from pycomex_index.discovery import INDEX_FOLDER_NAME
from pycomex_index.errors import (
    ArchiveNotFoundError,
    IndexDamagedError,
    IndexReadOnlyError,
    IndexUnavailableError,
    NotAnIndexError,
    PycomexIndexError,
)
from pycomex_index.postgresql import PostgresDatabase, serves_url

logger = logging.getLogger("pycomex_index")

#: The newest migration shipped in ``pycomex_index.migrations`` (a test keeps the two equal).
HEAD_REVISION = "0015"
INDEX_ENV_VARIABLE = "PYCOMEX_INDEX"
INDEX_FILE_NAME = "index.sqlite3"
#: Written into the SQLite header of every index we open (``PRAGMA application_id``, "PCXI"): the header
#: is the file's first 100 bytes, so the mark still says "ours" when other pages are damaged.
APPLICATION_ID = 0x50435849


@dataclass
class ArchiveIndex:
    """An open index together with the archive it describes."""

    db: IndexDatabase
    root: str
    archive_id: int
    location: str
    #: Opened without write access (an immutable or read-only file): nothing can be synced into it.
    read_only: bool = False
    #: The stored times of every experiment's metadata file (and of its folder) are the disk's: this process
    #: just compared them in a sync, or a live watcher keeps them current. Judging a running run then reads
    #: them here instead of calling ``stat`` (see :mod:`pycomex_index.liveness`).
    metadata_times_current: bool = False
    folder_times_current: bool = False

    @property
    def display_root(self) -> str:
        """How paths are shown: the archive folder's own name, as in ``results/neural_net/...``."""
        return os.path.basename(self.root.rstrip(os.sep)) or self.root

    def display_path(self, rel_path: str) -> str:
        """``results/neural_net/<run>``: how an experiment is shown to people."""
        return f"{self.display_root}/{rel_path}"

    @property
    def shown_location(self) -> str:
        """The location as it may be shown: a password in a URL masked."""
        return masked_url(self.location)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ArchiveIndex:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def resolve_archive_root(path: str) -> str:
    """The absolute archive root, or a clear error when it is missing or not a folder."""
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(root):
        raise ArchiveNotFoundError(f"archive not found: {root} (give the results folder with --path)")
    if not os.path.isdir(root):
        raise ArchiveNotFoundError(f"archive path is not a folder: {root}")
    return root


def is_database_url(location: str) -> bool:
    return "://" in location


def _user_cache_folder() -> str:
    from platformdirs import user_cache_dir

    return os.path.abspath(user_cache_dir("pycomex-index"))


def archive_path_tag(root: str) -> str:
    """A short digest of the archive's path, for names of files kept for it outside the archive."""
    import hashlib  # here, not at the top: it loads OpenSSL (3 ms), and only these rare cases need it

    return hashlib.sha256(root.encode()).hexdigest()[:16]


def user_cache_stem(root: str) -> str:
    """The start of the names of the archive's files in the user's cache (its index, its daemon's files)."""
    return os.path.join(_user_cache_folder(), f"{os.path.basename(root) or 'root'}-{archive_path_tag(root)}")


def resolve_index_location(root: str, index: str | None = None) -> str:
    """The index file path or database URL for the archive at ``root``."""
    location = index or os.environ.get(INDEX_ENV_VARIABLE) or None
    if location:
        return location if is_database_url(location) else os.path.abspath(os.path.expanduser(location))
    folder = os.path.join(root, INDEX_FOLDER_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return os.path.join(folder, INDEX_FILE_NAME)
    except OSError:
        pass
    # A read-only archive (a shared or mounted one) still gets an index: in the user's cache.
    return user_cache_stem(root) + ".sqlite3"


def open_archive_index(path: str, index: str | None = None, *, allow_read_only: bool = False) -> ArchiveIndex:
    """Open (creating or upgrading as needed) the index of the archive at ``path``.

    An index file that cannot be written (immutable, read-only by permissions
    or mount) raises :class:`IndexReadOnlyError`, unless ``allow_read_only``:
    then it is opened read-only (``ArchiveIndex.read_only``) for a command that
    only reads, provided it is at the current revision and knows the archive.
    """
    root = resolve_archive_root(path)
    location = resolve_index_location(root, index)
    read_only = not is_database_url(location) and _exists_but_not_writable(location)
    if read_only and not allow_read_only:
        raise IndexReadOnlyError(
            f"the index {location} cannot be written (it is immutable, read-only or on a read-only mount)"
        )
    db = _open_database(location, read_only=read_only)
    try:
        archive_id = register_archive(db, root)
    except BaseException:
        db.close()
        raise
    return ArchiveIndex(db=db, root=root, archive_id=archive_id, location=location, read_only=read_only)


def _exists_but_not_writable(path: str) -> bool:
    # access() also answers for `chattr +i` (EPERM) and read-only mounts (EROFS), which root's bits do not.
    return os.path.exists(path) and not os.access(path, os.W_OK)


def _open_database(location: str, read_only: bool = False) -> IndexDatabase:
    if is_database_url(location):
        if location.startswith("sqlite:///") and "?" not in location:
            return _open_sqlite_file(location[len("sqlite:///") :], via_sqlalchemy=True)
        db: IndexDatabase | None = None
        try:
            db = PostgresDatabase(location) if serves_url(location) else SqlAlchemyDatabase(location)
            ensure_schema(db)
        except Exception as error:
            if db is not None:
                db.close()
            if isinstance(error, PycomexIndexError):
                raise
            raise IndexUnavailableError(f"cannot open index {masked_url(location)}: {database_reason(error)}") from None
        return db
    return _open_sqlite_file(location, read_only=read_only)


def _check_index_path(path: str) -> None:
    """Refuse a device, pipe or folder as index: SQLite would write into it, and its lock file beside it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise IndexUnavailableError(f"cannot use the index {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise NotAnIndexError(f"the index {path} is {kind}; name a file (new or made by pycomex-index) with --index")


def _open_sqlite_file(path: str, via_sqlalchemy: bool = False, read_only: bool = False) -> IndexDatabase:
    path = os.path.abspath(path)
    _check_index_path(path)
    if not read_only:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as error:
            raise IndexUnavailableError(f"cannot create the index folder for {path}: {error.strerror}") from None
    # No peeking at the file's header with open(): closing any descriptor of a SQLite file drops this
    # process's POSIX locks on it, so a second open in a process that holds a connection could let
    # another process delete the live WAL. SQLite's own "file is not a database" is the check.
    try:
        return _connect_at_head(path, via_sqlalchemy, read_only)
    except IndexDamagedError as error:
        if read_only:
            raise IndexDamagedError(f"{error}; it is read-only, so it cannot be set aside and rebuilt", path) from None
        return replace_damaged_index_file(path, error, via_sqlalchemy=via_sqlalchemy)


def _connect_at_head(path: str, via_sqlalchemy: bool, read_only: bool) -> IndexDatabase:
    """A connection to ``path`` with the schema at head (read-only: already at head), marked as ours."""
    db: IndexDatabase | None = None
    try:
        if via_sqlalchemy:
            db = SqlAlchemyDatabase(f"sqlite:///{path}")
        else:
            db = SqliteFileDatabase(path, read_only=read_only, wal=False)
            if not read_only:
                stored_revision(db)  # refuses a database that is not ours before WAL rewrites its header
                db.enable_wal()
        if read_only:
            revision = stored_revision(db)
            if revision != HEAD_REVISION:
                raise IndexReadOnlyError(
                    f"the index {path} is read-only and at schema revision {revision}, not {HEAD_REVISION}: "
                    "it cannot be upgraded"
                )
        else:
            ensure_schema(db)
            _mark_as_ours(db)
            mend_interrupted_bulk_load(db, path)
        return db
    except BaseException as error:
        if db is not None:
            db.close()
        if isinstance(error, PycomexIndexError) or not isinstance(error, Exception):
            raise
        raise IndexUnavailableError(f"cannot open index {path}: {error}") from None


def _mark_as_ours(db: IndexDatabase) -> None:
    """Stamp :data:`APPLICATION_ID` into the header once (indexes made before the mark get it here)."""
    row = db.fetch_one("PRAGMA application_id")
    if row is not None and row[0] == 0:
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except IndexReadOnlyError:
            pass


def is_damage_error(error: BaseException) -> bool:
    """True when SQLite reports damage or a file that is not a database (SQLITE_CORRUPT, SQLITE_NOTADB).

    Decided by result code, never by message text; works on ``sqlite3`` errors,
    SQLAlchemy's wrappers of them (via ``.orig``) and the library's own
    :class:`IndexDamagedError`.
    """
    if isinstance(error, IndexDamagedError):
        return True
    return sqlite_result_code(error) in SQLITE_DAMAGE_CODES


def is_our_index_file(path: str) -> bool:
    """Whether a file SQLite calls damaged was our index, so it may be renamed aside and rebuilt.

    Renaming is the cure for an index but would be harm to anything else a
    user named by mistake (``--index notes.pdf``). The rule: a regular file
    (never a device, pipe or folder) that

    * sits where pycomex-index alone puts indexes (``<archive>/.pycomex_index/index.sqlite3``,
      or an index file in the user cache folder): whatever is there, we put there; or
    * carries our mark in its SQLite header (:data:`APPLICATION_ID`, stamped into every
      index we open; the header outlives damage to other pages); or
    * has a readable schema holding our ``alembic_version`` and ``experiments`` tables
      (an index made before the mark, damaged beyond page 1).

    Anything else is left untouched and reported.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    if _is_in_our_places(path):
        return True
    import sqlite3
    from urllib.parse import quote

    # Through SQLite, not open(): see the note in _open_sqlite_file about POSIX locks.
    try:
        connection = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        try:
            if connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                return True
        except sqlite3.Error:
            return False  # no SQLite header: not a database at all
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error:
            return False
        return {"alembic_version", "experiments"} <= tables
    finally:
        connection.close()


def _is_in_our_places(path: str) -> bool:
    folder, name = os.path.split(path)
    if name == INDEX_FILE_NAME and os.path.basename(folder) == INDEX_FOLDER_NAME:
        return True
    return folder == _user_cache_folder() and name.endswith(".sqlite3")


def set_aside_damaged_index(path: str, reason: str) -> str:
    """Rename a damaged index (and its WAL files) out of the way so a fresh one can be built; the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = f"{path}.damaged-{stamp}"
    counter = 1
    while os.path.lexists(aside):
        counter += 1
        aside = f"{path}.damaged-{stamp}-{counter}"
    for suffix in ("", "-wal", "-shm"):
        try:
            os.replace(path + suffix, aside + suffix)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise IndexDamagedError(
                f"the index {path} is damaged ({reason}) and cannot be moved aside: {error.strerror}", path
            ) from None
    return aside


def replace_damaged_index_file(path: str, error: IndexDamagedError, *, via_sqlalchemy: bool = False) -> IndexDatabase:
    """Set a damaged index file aside, open a fresh one and copy into it what :func:`salvage_records` can read.

    Refuses (the file untouched) when the file was not our index: see :func:`is_our_index_file`.
    """
    reason = _damage_reason(error)
    if not is_our_index_file(path):
        raise NotAnIndexError(
            f"{path} is not a pycomex-index index ({reason}); it was left untouched: "
            "name another file with --index, or delete it by hand if it was an index"
        )
    aside = set_aside_damaged_index(path, reason)
    try:
        db = _connect_at_head(path, via_sqlalchemy, read_only=False)
    except IndexDamagedError as again:
        raise IndexDamagedError(f"a fresh index at {path} is damaged too ({_damage_reason(again)})", path) from None
    try:
        salvage = salvage_records(aside, db)
    except BaseException:
        db.close()
        raise
    logger.warning(
        "the index %s was unusable (%s); moved it to %s and rebuilding from the archive; %s",
        path,
        reason,
        aside,
        salvage.describe(aside),
    )
    return db


def _damage_reason(error: BaseException) -> str:
    """SQLite's words from an IndexDamagedError's message ("the index X is damaged (REASON)")."""
    text = str(error)
    return text[text.find("(") + 1 : text.rfind(")")] if "(" in text and text.endswith(")") else text


def recover_damaged_index(index: ArchiveIndex, error: IndexDamagedError) -> None:
    """Mend an index that reported damage in the middle of a query: close it, set it aside, build a fresh one.

    The next open finds a fresh index (at head, holding the salvaged journal
    and export records) and syncs it from the archive. A database URL that
    reports damage cannot be set aside: ``error`` is raised again.
    """
    index.close()
    if is_database_url(index.location) and not (index.location.startswith("sqlite:///") and "?" not in index.location):
        raise error
    path = index.location[len("sqlite:///") :] if is_database_url(index.location) else index.location
    if index.read_only:
        raise IndexDamagedError(f"{error}; it is read-only, so it cannot be set aside and rebuilt", path) from None
    replace_damaged_index_file(os.path.abspath(path), error, via_sqlalchemy=is_database_url(index.location)).close()


#: The records a rebuild from the archive cannot recreate, parents first; a child row is kept only with its parent.
SALVAGED_TABLES: tuple[tuple[str, str | None, str | None], ...] = (
    # (table, column referring to a parent, parent table)
    ("archives", None, None),
    ("modify_runs", "archive_id", "archives"),
    ("modify_journal", "run_id", "modify_runs"),
    ("exports", "archive_id", "archives"),
    ("export_members", "export_id", "exports"),
)
#: Describe the experiment rows that are about to be rebuilt, not facts to keep.
_NOT_SALVAGED_COLUMNS = {"archives": {"last_sync_at", "last_sync_seconds"}}


@dataclass
class SalvageReport:
    """How many rows of each salvaged table were copied, and which tables had unreadable rows."""

    copied: dict[str, int] = field(default_factory=dict)
    damaged_tables: set[str] = field(default_factory=set)

    def describe(self, aside: str) -> str:
        kept = (
            f"kept {self.copied.get('modify_runs', 0)} modify runs with {self.copied.get('modify_journal', 0)} "
            f"journal entries and {self.copied.get('exports', 0)} exports with "
            f"{self.copied.get('export_members', 0)} members"
        )
        if self.damaged_tables:
            kept += f" (some were on damaged pages: {', '.join(sorted(self.damaged_tables))}; they stay in {aside})"
        return kept


def salvage_records(aside: str, db: IndexDatabase) -> SalvageReport:
    """Copy the readable rows of the modify journal and export tables from a damaged file into ``db``.

    These rows (what ``undo`` restores, what ``compress`` wrote) exist nowhere
    else; everything else is rebuilt from the archive. Rows keep their ids,
    so references between them hold. A table is read in rowid order; where a
    damaged page stops the scan, reading resumes past it (rows on that page
    are lost; they remain in the file set aside).
    """
    import sqlite3
    from urllib.parse import quote

    report = SalvageReport()
    try:
        source = sqlite3.connect(f"file:{quote(aside)}?mode=ro", uri=True)
    except sqlite3.Error:
        report.damaged_tables.update(table for table, _, _ in SALVAGED_TABLES)
        return report
    kept_ids: dict[str, set[Any]] = {}
    try:
        with db.transaction():
            for table, parent_column, parent_table in SALVAGED_TABLES:
                columns = _common_columns(source, db, table)
                if not columns:
                    if _has_table(source, table) is not False:
                        report.damaged_tables.add(table)
                    continue
                parent_at = columns.index(parent_column) if parent_column else None
                id_at = columns.index("id") if "id" in columns else None
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
                ids: set[Any] = set()
                batch = []
                for values in _readable_rows(source, table, columns, report):
                    if parent_at is not None and values[parent_at] not in kept_ids.get(parent_table or "", set()):
                        continue
                    if id_at is not None:
                        ids.add(values[id_at])
                    batch.append(dict(zip(columns, values, strict=True)))
                db.executemany(insert, batch)
                kept_ids[table] = ids
                report.copied[table] = len(batch)
    finally:
        source.close()
    return report


def _has_table(source: Any, table: str) -> bool | None:
    """Whether the damaged file has ``table`` (None: its schema cannot be read)."""
    import sqlite3

    try:
        return (
            source.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            is not None
        )
    except sqlite3.Error:
        return None


def _common_columns(source: Any, db: IndexDatabase, table: str) -> list[str]:
    """Columns of ``table`` in both files (the damaged one may be at an older revision)."""
    import sqlite3

    try:
        old = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    except sqlite3.Error:
        return []
    new = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    skipped = _NOT_SALVAGED_COLUMNS.get(table, set())
    return [column for column in old if column in new and column not in skipped]


def _readable_rows(source: Any, table: str, columns: list[str], report: SalvageReport) -> Iterator[tuple]:
    import sqlite3

    sql = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    try:
        highest = source.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        highest = None
    after, jump = -(2**63), 1
    while True:
        try:
            for row in source.execute(sql, (after,)):
                after, jump = row[0], 1
                yield row[1:]
            return
        except sqlite3.Error:
            report.damaged_tables.add(table)
            if highest is None or after >= highest:
                return
            # Past the damaged page: a growing step, so a long damaged stretch costs few probes.
            after, jump = max(after, -(2**62)) + jump, jump * 2


def stored_revision(db: IndexDatabase) -> str | None:
    """The Alembic revision stamped in the database, or None for a new, empty one."""
    tables = {row[0] for row in db.execute(_TABLE_NAMES_SQL.get(_dialect(db), _TABLE_NAMES_SQL["default"]))}
    if "alembic_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise NotAnIndexError(
                f"the index database {db.where} holds tables but no alembic_version: "
                "it was not made by pycomex-index; it was left untouched"
            )
        return None
    row = db.fetch_one("SELECT version_num FROM alembic_version")
    return row[0] if row else None


_TABLE_NAMES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    # The catalog itself: information_schema.tables checks privileges row by row, 8-10 ms of every
    # PostgreSQL command here against ~0.5 ms (tables, partitioned tables, views, as that view lists).
    "postgresql": "SELECT relname FROM pg_catalog.pg_class "
    "WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p', 'v')",
    "default": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
}


def _dialect(db: IndexDatabase) -> str:
    if db.url.startswith("sqlite"):
        return "sqlite"
    return "postgresql" if db.url.startswith("postgres") else "default"


def ensure_schema(db: IndexDatabase) -> None:
    """Bring the schema to :data:`HEAD_REVISION`; import Alembic only when it is not there yet."""
    if stored_revision(db) == HEAD_REVISION:
        return
    with db.migration_lock():
        if stored_revision(db) != HEAD_REVISION:
            run_migrations(db, "head")


def run_migrations(db: IndexDatabase, revision: str) -> None:
    """Upgrade the database to ``revision`` with Alembic (used by tests to build old revisions too)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    # Config is a ConfigParser: "%" in the install path (".../lab%20share/...") must be escaped as "%%".
    config.set_main_option("script_location", migrations_folder().replace("%", "%%"))
    engine = db.sqlalchemy_engine()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except Exception as error:
        translated = translate_database_error(error, db.where)
        if translated is None:
            raise
        raise translated from error
    finally:
        if isinstance(db, SqliteFileDatabase):
            engine.dispose()


def migrations_folder() -> str:
    return os.path.dirname(os.path.abspath(migrations.__file__))
