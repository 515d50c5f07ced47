"""One small interface over the index database: SQL text with ``:name`` parameters.

Every query in the library is plain, portable SQL (SQLite and PostgreSQL
both understand it) run through an :class:`IndexDatabase`. A local SQLite
file is driven by the standard library's ``sqlite3`` module, which starts in
a few milliseconds; any other SQLAlchemy URL goes through a SQLAlchemy Core
connection. Importing SQLAlchemy costs ~150 ms, more than a whole ``tail``,
so it is only imported for URLs, migrations and schema checks.

Errors: both implementations turn a locked, full, damaged or read-only
database into the library's exceptions (:func:`translate_database_error`),
by SQLite's result code or PostgreSQL's SQLSTATE, never by message text, and
wherever the database reports it: running a statement, committing, or while
the caller iterates the rows of a query (SQLite reads pages lazily, so a
damaged page can surface at the 50,000th row). Other database errors (SQL
the library got wrong) stay as they are: they are bugs, not conditions.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from pycomex_index.errors import (
    IndexBusyError,
    IndexConflictError,
    IndexDamagedError,
    IndexFullError,
    IndexReadOnlyError,
    IndexUnavailableError,
    MissingRowError,
    PycomexIndexError,
)
from pycomex_index.query_ahead import QueryAhead

#: How long a writer waits for another writer (the daemon, a second command) before giving up.
BUSY_TIMEOUT_SECONDS = 60.0
#: Overrides :data:`BUSY_TIMEOUT_SECONDS` (seconds); tests use a short one to meet a real lock quickly.
BUSY_TIMEOUT_ENV_VARIABLE = "PYCOMEX_INDEX_BUSY_TIMEOUT"
#: Rows fetched per step while a caller iterates a query: a batch keeps the error translation off the per-row path.
FETCH_BATCH_SIZE = 1000

#: How often :meth:`IndexDatabase.run_in_transaction` runs a unit of work that met a deadlock or conflict.
CONFLICT_ATTEMPTS = 6
#: The first pause before running it again (seconds); it doubles per attempt, with random jitter.
CONFLICT_PAUSE_SECONDS = 0.05

#: A result row. sqlite3 gives tuples; SQLAlchemy's ``Row`` is a tuple-like sequence (indexing, slicing,
#: unpacking, ``==`` with a tuple, ``dict()`` of pairs), not a ``tuple`` subclass: use rows as such, never
#: ``isinstance(row, tuple)`` or ``row + (...)``.
Row = tuple[Any, ...]
T = TypeVar("T")

BUSY_MESSAGE = "the index is busy (another pycomex-index process is writing); try again"
FULL_MESSAGE = "no space left on the device; nothing was lost, free some space and run the command again"

# SQLite primary result codes (an extended code carries its primary one in the low byte).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
SQLITE_DAMAGE_CODES = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
#: SQLITE_IOERR_SHMSIZE: the WAL's shared-memory file could not grow. Measured on a full tmpfs: a new
#: connection gets this, not SQLITE_FULL, because its first act is extending the -shm file.
_SQLITE_IOERR_SHMSIZE = 4874


def masked_url(location: str) -> str:
    """``location`` as it may be shown: a password in a database URL becomes ``***``."""
    scheme, found, rest = location.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (found and at and ":" in credentials):
        return location
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


#: A shorter busy timeout for connections opened in this context (:func:`short_busy_timeout`).
_busy_timeout_override: contextvars.ContextVar[float | None] = contextvars.ContextVar("busy_timeout", default=None)


@contextlib.contextmanager
def short_busy_timeout(seconds: float) -> Iterator[None]:
    """Connections opened inside wait at most ``seconds`` for a lock: the pycomex plugin must not hold up an experiment."""
    token = _busy_timeout_override.set(seconds)
    try:
        yield
    finally:
        _busy_timeout_override.reset(token)


def busy_timeout_seconds() -> float:
    """The busy timeout: :data:`BUSY_TIMEOUT_ENV_VARIABLE` when set to a number, else the default."""
    override = _busy_timeout_override.get()
    if override is not None:
        return override
    try:
        return max(0.0, float(os.environ[BUSY_TIMEOUT_ENV_VARIABLE]))
    except (KeyError, ValueError):
        return BUSY_TIMEOUT_SECONDS


def sqlite_result_code(error: BaseException, extended: bool = False) -> int | None:
    """SQLite's primary (or extended) result code of ``error``, or of the DB-API error SQLAlchemy wraps in ``.orig``."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        original = getattr(error, "orig", None)
        code = getattr(original, "sqlite_errorcode", None) if original is not None else None
    if code is None:
        return None
    return code if extended else code & 0xFF


def _sqlstate(error: BaseException) -> str | None:
    original = getattr(error, "orig", None) or error
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def database_reason(error: BaseException) -> str:
    """The database's own words, without SQLAlchemy's wrapping (statement, parameters, help link)."""
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


def translate_database_error(error: BaseException, where: str) -> PycomexIndexError | None:
    """The library exception for a database condition, or None for an error that is a bug (bad SQL).

    ``where`` names the index (its path or URL) in messages.
    """
    code = sqlite_result_code(error)
    if code is not None:
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return IndexBusyError(BUSY_MESSAGE)
        if code == _SQLITE_FULL or sqlite_result_code(error, extended=True) == _SQLITE_IOERR_SHMSIZE:
            return IndexFullError(FULL_MESSAGE)
        if code in SQLITE_DAMAGE_CODES:
            return IndexDamagedError(f"the index {where} is damaged ({database_reason(error)})", location=where)
        if code == _SQLITE_READONLY:
            return IndexReadOnlyError(f"the index {where} cannot be written ({database_reason(error)})")
        if code in (_SQLITE_PERM, _SQLITE_IOERR, _SQLITE_CANTOPEN):
            return IndexUnavailableError(f"cannot use the index {where}: {database_reason(error)}")
        return None
    state = _sqlstate(error)
    if not state:
        return None
    # PostgreSQL: lock timeout, deadlock and serialization failures mean "try again"; class 53 is resources.
    if state in ("40001", "40P01"):
        return IndexConflictError(BUSY_MESSAGE)
    if state == "55P03":  # lock_not_available: lock_timeout (see busy_timeout_seconds) passed
        return IndexBusyError(BUSY_MESSAGE)
    if state in ("53100", "53200"):
        return IndexFullError(FULL_MESSAGE)
    if state in ("XX001", "XX002"):
        return IndexDamagedError(f"the index {where} is damaged ({database_reason(error)})", location=where)
    if state == "25006":
        return IndexReadOnlyError(f"the index {where} cannot be written ({database_reason(error)})")
    if state.startswith("08"):
        return IndexUnavailableError(f"cannot use the index {where}: {database_reason(error)}")
    return None


def _translated_rows(
    rows: Any, fail: Callable[[BaseException], None], errors: type[BaseException] | tuple
) -> Iterator[Row]:
    """The rows of a live cursor, with database errors met while fetching them translated.

    Fetched in batches: the generator adds ~0.2 µs per batch, not per row
    (300,000 rows: the same time as iterating the cursor itself).
    """
    try:
        while batch := rows.fetchmany(FETCH_BATCH_SIZE):
            yield from batch
    except errors as error:
        fail(error)
        raise


class IndexDatabase:
    """What the library needs from a database connection."""

    url: str
    #: How the database is named in messages: a file's path, or the URL with its password masked.
    where: str
    #: Opened so that nothing is ever written (an index file that cannot be written).
    read_only: bool = False

    def _fail(self, error: BaseException) -> None:
        """Raise the library's exception for a database condition; return (the caller re-raises) for a bug."""
        translated = translate_database_error(error, self.where)
        if translated is not None:
            raise translated from error

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        raise NotImplementedError

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        """The first row of a query, or None."""
        return next(iter(self.execute(sql, params)), None)

    def runs_queries_ahead(self) -> bool:
        """Whether :meth:`execute_pieces` runs the later pieces at the same time as the first (worth splitting)."""
        return False

    def execute_pieces(self, pieces: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[Row]:
        """The rows of several queries (``(sql, params)``), one's after another's; each runs when its rows are reached."""
        return itertools.chain.from_iterable(self.execute(sql, params) for sql, params in pieces)

    def fetch_row(self, sql: str, params: dict[str, Any] | None = None) -> Row:
        """The first row of a query that always returns one (an aggregate, a row the caller just wrote).

        Raises :class:`MissingRowError` when there is none: the library's own
        assumption failed, which is a bug, not a condition the user can act on.
        """
        row = self.fetch_one(sql, params)
        if row is None:
            raise MissingRowError(f"expected a row from the index {self.where}, got none: {sql}")
        return row

    _in_transaction = False

    def transaction(self, *, durable: bool = True) -> contextlib.AbstractContextManager[None]:
        """One transaction; ``durable=False``: its commit may be lost by a crash (see :meth:`run_in_transaction`)."""
        raise NotImplementedError

    def run_in_transaction(
        self, work: Callable[[], T], *, attempts: int = CONFLICT_ATTEMPTS, durable: bool = True
    ) -> T:
        """``work()`` in one transaction, run again (rolled back first) when the database reports a conflict.

        On PostgreSQL two writers that lock the same rows in different orders
        deadlock, and the server rolls one back (SQLSTATE 40P01); a transaction
        can also fail serialization (40001). Both leave nothing behind, so the
        whole unit of work is run again, after a pause that doubles per attempt
        and is randomized so two retrying writers do not meet again in step.
        ``work`` must therefore do all its writing through this database and
        be safe to run twice. Called inside a transaction, ``work`` joins it and
        the outermost unit of work is the one retried.

        ``durable=False`` is for bookkeeping that a crash may lose without harm
        (what a later sync would redo): on PostgreSQL the commit then does not
        wait for its WAL to reach the disk (``synchronous_commit = off``, 7-11 ms
        per commit measured here). A crash can lose only such transactions, whole
        and in commit order, so a durable commit made before is never lost.
        SQLite in WAL mode with ``synchronous = NORMAL`` never waits at commit anyway.
        """
        if self._in_transaction:
            return work()
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(durable=durable):
                    return work()
            except IndexConflictError:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0.5, 1.0) * CONFLICT_PAUSE_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def sqlalchemy_engine(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def migration_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while the schema is checked and migrated, so concurrent first opens migrate once."""
        return contextlib.nullcontext()

    def close(self) -> None:
        raise NotImplementedError


def _usable_cpus() -> int:
    # Linux says which CPUs this process may run on (a container or taskset may allow fewer than the machine has).
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SqliteFileDatabase(IndexDatabase):
    """A SQLite file through ``sqlite3``: WAL mode, a busy timeout, foreign keys on."""

    def __init__(self, path: str, *, read_only: bool = False, wal: bool = True) -> None:
        """Open ``path``; ``read_only`` opens an existing file without ever writing to it.

        ``wal=False`` leaves the journal mode alone (switching to WAL writes the
        file's header), so the store can first check that the file is an index
        and not a user's database, then call :meth:`enable_wal`.
        """
        import sqlite3

        self._errors = sqlite3.Error
        self.path = self.where = path
        self.url = f"sqlite:///{path}"
        self.read_only = read_only
        self.connection = self._connect()
        self._in_transaction = False
        try:
            if wal and not read_only:
                self.enable_wal()
        except sqlite3.Error as error:
            self.connection.close()
            self._fail(error)
            raise
        except PycomexIndexError:
            self.connection.close()
            raise

    def _connect(self) -> Any:
        """A new ``sqlite3`` connection to the file, as this database's: read-only or not, busy timeout, foreign keys."""
        import sqlite3

        timeout = busy_timeout_seconds()
        try:
            if self.read_only:
                from urllib.parse import quote

                connection = sqlite3.connect(
                    f"file:{quote(self.path)}?mode=ro",
                    uri=True,
                    timeout=timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            self._fail(error)
            raise
        try:
            for pragma in (f"PRAGMA busy_timeout = {int(timeout * 1000)}", "PRAGMA foreign_keys = ON"):
                connection.execute(pragma)
        except sqlite3.Error as error:
            connection.close()
            self._fail(error)
            raise
        return connection

    def enable_wal(self) -> None:
        """WAL mode (readers never wait for the writer) with the matching sync level.

        Switching a file to WAL takes an exclusive lock. Processes opening a new index at once each hold a
        shared lock when they ask for it, and SQLite fails all but one at once ("database is locked") rather
        than let them wait on each other; so the switch is made under the migration lock, one at a time.
        """
        mode = self.fetch_one("PRAGMA journal_mode")
        if mode is None or str(mode[0]).lower() != "wal":
            with self.migration_lock():
                self._run("PRAGMA journal_mode = WAL")
        self._run("PRAGMA synchronous = NORMAL")

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        try:
            cursor = self.connection.execute(sql, params or {})
        except self._errors as error:
            self._fail(error)
            raise
        if cursor.description is None:  # a statement that returns no rows
            return iter(())
        return _translated_rows(cursor, self._fail, self._errors)

    def runs_queries_ahead(self) -> bool:
        """On a file, outside a transaction (another connection sees only what is committed), with a second CPU."""
        return not self.connection.in_transaction and os.path.isfile(self.path) and _usable_cpus() > 1

    def execute_pieces(self, pieces: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[Row]:
        """The later pieces run ahead, each on a connection and in a thread of its own, while the first runs here.

        A sorted query does all its work (scan, joins, sort) before its first
        row, with Python's lock released: two halves of a query run at once on
        two CPUs, and the second is ready when the caller is done with the
        first's rows (``list --select``'s query and lines at 100,000 runs:
        132 → 98 ms). Each piece reads the index as committed when it starts,
        so the pieces must split the rows by what a write does not change in a
        stored row.
        """
        if len(pieces) < 2 or not self.runs_queries_ahead():
            return super().execute_pieces(pieces)
        # Chained in C: no generator step of ours per row.
        return itertools.chain.from_iterable(self._rows_of_pieces_run_ahead(pieces))

    def _rows_of_pieces_run_ahead(self, pieces: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[Iterator[Row]]:
        ahead: list[QueryAhead] = []
        try:
            for sql, params in pieces[1:]:
                ahead.append(QueryAhead(self._connect(), sql, params))
            yield self.execute(*pieces[0])
            for query in ahead:
                yield _translated_rows(query.cursor(self._fail), self._fail, self._errors)
        finally:
            for query in ahead:
                query.close()

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        try:
            return self.connection.execute(sql, params or {}).fetchone()
        except self._errors as error:
            self._fail(error)
            raise

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        try:
            self.connection.executemany(sql, rows)
        except self._errors as error:
            self._fail(error)
            raise

    def _run(self, statement: str) -> None:
        try:
            self.connection.execute(statement)
        except self._errors as error:
            self._fail(error)
            raise

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        # durable=False changes nothing: in WAL mode with synchronous = NORMAL a commit never waits for the disk.
        if self._in_transaction:
            yield
            return
        # IMMEDIATE takes the write lock up front, so two writers queue on the
        # busy timeout instead of one failing when it upgrades a read lock.
        self._run("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:  # SQLite rolls back by itself after some errors (SQLITE_FULL)
                self._run("ROLLBACK")
            raise
        else:
            self._run("COMMIT")
        finally:
            self._in_transaction = False

    def sqlalchemy_engine(self):
        """An engine on this very file (for Alembic), with the same settings as this connection.

        The file is handed over by a ``creator``, not in a URL: SQLAlchemy
        URL-decodes a URL's path, so a folder named ``pc%41t`` would become ``pcAt``.
        """
        import sqlite3

        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        path = self.path
        return _configured_engine(
            create_engine(
                "sqlite://", creator=lambda: sqlite3.connect(path, timeout=busy_timeout_seconds()), poolclass=NullPool
            )
        )

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """An exclusive lock on a file beside the database (only beside a regular file, never ``/dev/null.lock``)."""
        if not os.path.isfile(self.path):
            yield
            return
        import fcntl

        with open(self.path + ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def close(self) -> None:
        self.connection.close()


#: The PostgreSQL advisory lock key taken while migrating (any fixed number; this one is "PCXI").
MIGRATION_LOCK_KEY = 0x50435849


class SqlAlchemyDatabase(IndexDatabase):
    """Any database SQLAlchemy can reach by URL (PostgreSQL for a shared index, or SQLite)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import DBAPIError

        self._errors = DBAPIError
        self.url = url
        self.read_only = False
        self.where = masked_url(url)  # never a password in a message
        try:
            self.engine = _configured_engine(create_engine(url))
            self.connection = self.engine.connect()
        except DBAPIError as error:
            self._fail(error)
            raise IndexUnavailableError(f"cannot use the index {self.where}: {database_reason(error)}") from None
        self._in_transaction = False

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        from sqlalchemy import text

        try:
            result = self.connection.execute(text(sql), params or {})
            if not self._in_transaction:
                rows = result.fetchall() if result.returns_rows else []
                self.connection.commit()
                return iter(rows)
        except self._errors as error:
            self._fail(error)
            raise
        return _translated_rows(result, self._fail, self._errors) if result.returns_rows else iter(())

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        from sqlalchemy import text

        batch = list(rows)
        try:
            if batch:
                self.connection.execute(text(sql), batch)
            if not self._in_transaction:
                self.connection.commit()
        except self._errors as error:
            self._fail(error)
            raise

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        try:
            self.connection.commit()
        except self._errors as error:
            self._fail(error)
            raise
        self._in_transaction = True
        try:
            if not durable and self.engine.dialect.name == "postgresql":
                self.execute("SET LOCAL synchronous_commit = off")  # see run_in_transaction
            yield
        except BaseException:
            self.connection.rollback()
            raise
        else:
            try:
                self.connection.commit()
            except self._errors as error:
                self._fail(error)
                raise
        finally:
            self._in_transaction = False

    def sqlalchemy_engine(self):
        return self.engine

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """PostgreSQL: a session advisory lock (it outlives commits, and ends with the connection if we die)."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        self.execute("SELECT pg_advisory_lock(:key)", {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            self.execute("SELECT pg_advisory_unlock(:key)", {"key": MIGRATION_LOCK_KEY})

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def _configured_engine(engine):
    """Give connections made by SQLAlchemy the busy timeout; SQLite ones the settings of ``SqliteFileDatabase``.

    On PostgreSQL the busy timeout is ``lock_timeout``: a statement waiting
    longer than it for a lock another connection holds fails with 55P03
    (:class:`IndexBusyError`) instead of waiting forever, as SQLite's busy timeout does.
    """
    from sqlalchemy import event

    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _set_lock_timeout(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            # A plain SET inside the driver's implicit transaction would be undone by a rollback: commit it.
            # lock_timeout 0 would mean "wait forever": the shortest timeout is 1 ms.
            cursor.execute(f"SET lock_timeout = {max(1, int(busy_timeout_seconds() * 1000))}")
            cursor.close()
            dbapi_connection.commit()

        return engine
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds() * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine
