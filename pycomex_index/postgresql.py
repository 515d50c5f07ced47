"""A PostgreSQL index through psycopg2 itself: what a read command needs, without SQLAlchemy.

Measured on this 2-core machine (``python -X importtime``): importing
SQLAlchemy costs 0.4-0.65 s, psycopg (3) 0.16-0.4 s (its package imports
asyncio, importlib.metadata and every error class, and has no way in that
skips its ``__init__``), psycopg2 0.03-0.05 s. With a watcher running, a
SQLite read command takes ~0.13 s in all, so the driver's import decided
whether PostgreSQL stayed within 2x of it. So every PostgreSQL URL
(``postgresql://``, ``postgresql+psycopg://``, ``postgresql+psycopg2://``)
is driven by psycopg2 directly, and SQLAlchemy (with Alembic, through the
same psycopg2) is imported only when the schema must be migrated: one
driver in the product.

The library's SQL names parameters ``:name`` (SQLAlchemy's ``text()`` style);
they are rewritten once per statement text into psycopg2's ``%(name)s``.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pycomex_index.db import (
    MIGRATION_LOCK_KEY,
    IndexDatabase,
    Row,
    _configured_engine,
    _translated_rows,
    busy_timeout_seconds,
    database_reason,
    masked_url,
)
from pycomex_index.errors import IndexUnavailableError

#: The URL schemes served here; another driver's (``postgresql+asyncpg``...) goes through SQLAlchemy.
POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")

#: Rows sent per round trip by :meth:`PostgresDatabase.executemany` (psycopg2's own sends one per row).
EXECUTEMANY_PAGE_SIZE = 500

# ":name" but not the second colon of a "::type" cast.
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def serves_url(url: str) -> bool:
    """Whether :class:`PostgresDatabase` can open ``url`` (a PostgreSQL URL for a psycopg driver)."""
    # Imported here: every command imports this module, and one on a SQLite file needs no URL parser (~2 ms).
    from urllib.parse import urlsplit

    return urlsplit(url).scheme in POSTGRESQL_SCHEMES


@functools.lru_cache(maxsize=256)
def driver_sql(sql: str) -> str:
    """``sql`` with ``:name`` parameters as ``%(name)s`` (and a literal ``%`` doubled)."""
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


def libpq_conninfo(url: str) -> str:
    """The libpq URI of a SQLAlchemy-style URL: the same user, password, host, database and query options.

    libpq reads passwords from ``PGPASSWORD`` and ``~/.pgpass`` by itself, so
    a URL without a password works as it does through SQLAlchemy.
    """
    return "postgresql://" + url.partition("://")[2]


class PostgresDatabase(IndexDatabase):
    """A PostgreSQL database through one psycopg2 connection (autocommit outside :meth:`transaction`)."""

    def __init__(self, url: str) -> None:
        import psycopg2
        from psycopg2.extensions import make_dsn, parse_dsn

        self._errors = psycopg2.Error
        self.url = url
        self.read_only = False
        self.where = masked_url(url)  # never a password in a message
        self._engine = None
        # lock_timeout: a statement waiting longer than the busy timeout for another connection's lock fails
        # with 55P03 (IndexBusyError) instead of waiting forever; 0 would mean forever, so at least 1 ms.
        # Given as a start-up option, it costs no round trip.
        lock_timeout = f"-c lock_timeout={max(1, int(busy_timeout_seconds() * 1000))}"
        try:
            conninfo = libpq_conninfo(url)
            # Appended to the URL's own start-up options, if it has any, so those still apply.
            options = f"{parse_dsn(conninfo).get('options') or ''} {lock_timeout}".strip()
            self.connection = psycopg2.connect(make_dsn(conninfo, options=options))
            self.connection.autocommit = True  # transactions are begun explicitly (transaction())
        except psycopg2.Error as error:
            self._fail(error)
            raise IndexUnavailableError(f"cannot use the index {self.where}: {database_reason(error)}") from None
        self._in_transaction = False

    def _cursor(self, sql: str, params: dict[str, Any] | None) -> Any:
        cursor = self.connection.cursor()
        try:
            cursor.execute(driver_sql(sql), params or {})
        except self._errors as error:
            cursor.close()
            self._fail(error)
            raise
        return cursor

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        cursor = self._cursor(sql, params)
        if cursor.description is None:
            cursor.close()
            return iter(())
        return _translated_rows(cursor, self._fail, self._errors)

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        cursor = self._cursor(sql, params)
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        batch = list(rows)
        if not batch:
            return
        from psycopg2.extras import execute_batch  # writers only: read commands never import it

        try:
            with self.connection.cursor() as cursor:
                execute_batch(cursor, driver_sql(sql), batch, page_size=EXECUTEMANY_PAGE_SIZE)
        except self._errors as error:
            self._fail(error)
            raise

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        try:
            self._run("BEGIN")
            if not durable:
                # The commit returns before its WAL reaches the disk: a crash may lose this transaction (and
                # only whole transactions, in commit order), never corrupt anything or reorder commits.
                self._run("SET LOCAL synchronous_commit = off")
            try:
                yield
            except BaseException:
                self._roll_back()
                raise
            self._run("COMMIT")  # raises what the commit met (a deferred conflict)
        finally:
            self._in_transaction = False

    def _run(self, statement: str) -> None:
        with self.connection.cursor() as cursor:
            try:
                cursor.execute(statement)
            except self._errors as error:
                self._roll_back()
                self._fail(error)
                raise

    def _roll_back(self) -> None:
        # A lost connection cannot roll back, and the server has then ended the transaction itself.
        with contextlib.suppress(self._errors), self.connection.cursor() as cursor:
            cursor.execute("ROLLBACK")

    def sqlalchemy_engine(self):
        """An engine on the same database, for Alembic: built (and SQLAlchemy imported) only when migrating."""
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            url = "postgresql+psycopg2://" + self.url.partition("://")[2]
            self._engine = _configured_engine(create_engine(url, poolclass=NullPool))
        return self._engine

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """A session advisory lock: it outlives commits, and ends with the connection if we die."""
        self.execute("SELECT pg_advisory_lock(:key)", {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            self.execute("SELECT pg_advisory_unlock(:key)", {"key": MIGRATION_LOCK_KEY})

    def close(self) -> None:
        self.connection.close()
        if self._engine is not None:
            self._engine.dispose()
