"""Where the index lives, opening it, and keeping its schema at the shipped revision.

An index is opened for one archive root. Opening it (1) finds the database
(``--index`` / ``PYCOMEX_INDEX``, else ``<archive>/.pycomex_index/index.sqlite3``,
else a per-archive file in the user cache dir when the archive is read-only),
(2) sets aside a file that SQLite calls damaged or not a database, (3) compares the
stored Alembic revision with :data:`HEAD_REVISION` and only imports Alembic
when they differ, (4) registers the archive root.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from pycomex_index.db import IndexDatabase, SqlAlchemyDatabase, SqliteFileDatabase
from pycomex_index.discovery import INDEX_FOLDER_NAME
from pycomex_index.errors import ArchiveNotFoundError, IndexUnavailableError

logger = logging.getLogger("pycomex_index")

#: The newest migration shipped in ``pycomex_index.migrations`` (a test keeps the two equal).
HEAD_REVISION = "0006"
INDEX_ENV_VARIABLE = "PYCOMEX_INDEX"
INDEX_FILE_NAME = "index.sqlite3"


@dataclass
class ArchiveIndex:
    """An open index together with the archive it describes."""

    db: IndexDatabase
    root: str
    archive_id: int
    location: str

    @property
    def display_root(self) -> str:
        """How paths are shown: the archive folder's own name, as in ``results/neural_net/...``."""
        return os.path.basename(self.root.rstrip(os.sep)) or self.root

    def display_path(self, rel_path: str) -> str:
        """``results/neural_net/<run>``: how an experiment is shown to people."""
        return f"{self.display_root}/{rel_path}"

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


def _user_cache_index_path(root: str) -> str:
    from platformdirs import user_cache_dir

    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(user_cache_dir("pycomex-index"), f"{os.path.basename(root) or 'root'}-{digest}.sqlite3")


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
    return _user_cache_index_path(root)


def open_archive_index(path: str, index: str | None = None) -> ArchiveIndex:
    """Open (creating or upgrading as needed) the index of the archive at ``path``."""
    root = resolve_archive_root(path)
    location = resolve_index_location(root, index)
    db = _open_database(location)
    try:
        archive_id = _register_archive(db, root)
    except BaseException:
        db.close()
        raise
    return ArchiveIndex(db=db, root=root, archive_id=archive_id, location=location)


def _open_database(location: str) -> IndexDatabase:
    if is_database_url(location):
        if location.startswith("sqlite:///") and "?" not in location:
            return _open_sqlite_file(location[len("sqlite:///"):], via_sqlalchemy=True)
        try:
            db: IndexDatabase = SqlAlchemyDatabase(location)
            ensure_schema(db)
        except Exception as error:
            raise IndexUnavailableError(f"cannot open index {location}: {error}") from None
        return db
    return _open_sqlite_file(location)


def _open_sqlite_file(path: str, via_sqlalchemy: bool = False) -> IndexDatabase:
    path = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as error:
        raise IndexUnavailableError(f"cannot create the index folder for {path}: {error.strerror}") from None
    # No peeking at the file's header with open(): closing any descriptor of a SQLite file drops this
    # process's POSIX locks on it, so a second open in a process that holds a connection could let
    # another process delete the live WAL. SQLite's own "file is not a database" is the check.
    for attempt in (1, 2):
        try:
            db = SqlAlchemyDatabase(f"sqlite:///{path}") if via_sqlalchemy else SqliteFileDatabase(path)
            ensure_schema(db)
            return db
        except Exception as error:
            if attempt == 2 or not is_damage_error(error):
                raise IndexUnavailableError(f"cannot open index {path}: {error}") from None
            set_aside_damaged_index(path, str(error))
    raise AssertionError("unreachable")


def is_damage_error(error: BaseException) -> bool:
    """True for SQLite's words for a damaged or foreign file (not for locks or permissions)."""
    message = str(error).lower()
    return any(
        phrase in message
        for phrase in ("not a database", "malformed", "file is encrypted", "disk image")
    )


def set_aside_damaged_index(path: str, reason: str) -> str:
    """Rename a damaged index (and its WAL files) out of the way so a fresh one can be built."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = f"{path}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        try:
            os.replace(path + suffix, aside + suffix)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise IndexUnavailableError(f"index {path} is damaged ({reason}) and cannot be moved aside: {error.strerror}") from None
    logger.warning("the index %s was unusable (%s); moved it to %s and rebuilding", path, reason, aside)
    return aside


def stored_revision(db: IndexDatabase) -> str | None:
    """The Alembic revision stamped in the database, or None for a new, empty one."""
    tables = {row[0] for row in db.execute(_TABLE_NAMES_SQL.get(_dialect(db), _TABLE_NAMES_SQL["default"]))}
    if "alembic_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise IndexUnavailableError(
                "the index database holds tables but no alembic_version: it was not made by pycomex-index"
            )
        return None
    row = db.fetch_one("SELECT version_num FROM alembic_version")
    return row[0] if row else None


_TABLE_NAMES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "default": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
}


def _dialect(db: IndexDatabase) -> str:
    return "sqlite" if db.url.startswith("sqlite") else "default"


def ensure_schema(db: IndexDatabase) -> None:
    """Bring the schema to :data:`HEAD_REVISION`; import Alembic only when it is not there yet."""
    if stored_revision(db) == HEAD_REVISION:
        return
    with _migration_lock(db):
        if stored_revision(db) != HEAD_REVISION:
            run_migrations(db, "head")


def run_migrations(db: IndexDatabase, revision: str) -> None:
    """Upgrade the database to ``revision`` with Alembic (used by tests to build old revisions too)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", migrations_folder())
    engine = db.sqlalchemy_engine()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    if isinstance(db, SqliteFileDatabase):
        engine.dispose()


def migrations_folder() -> str:
    import pycomex_index.migrations as migrations

    return os.path.dirname(os.path.abspath(migrations.__file__))


class _migration_lock:
    """An exclusive lock beside a SQLite file, so two commands never migrate the same new index at once."""

    def __init__(self, db: IndexDatabase) -> None:
        self.lock_path = db.path + ".lock" if isinstance(db, SqliteFileDatabase) else None
        self.file = None

    def __enter__(self) -> None:
        if self.lock_path is None:
            return
        import fcntl

        self.file = open(self.lock_path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: Any) -> None:
        if self.file is not None:
            self.file.close()


def _register_archive(db: IndexDatabase, root: str) -> int:
    row = db.fetch_one("SELECT id FROM archives WHERE root = :root", {"root": root})
    if row:
        return row[0]
    with db.transaction():
        db.execute(
            "INSERT INTO archives (root, created_at) VALUES (:root, :now) ON CONFLICT (root) DO NOTHING",
            {"root": root, "now": time.time()},
        )
    return db.fetch_one("SELECT id FROM archives WHERE root = :root", {"root": root})[0]
