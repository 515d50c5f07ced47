"""A PostgreSQL index through psycopg itself: what a read command needs, without SQLAlchemy.

Measured on this 2-core machine (``python -X importtime``): importing
SQLAlchemy costs 0.4-0.65 s and was most of the ~1.2 s fixed cost of every
command on a PostgreSQL index; psycopg alone costs ~0.2 s. So, as a local
SQLite file is driven by ``sqlite3``, a ``postgresql://`` or
``postgresql+psycopg://`` URL is driven by psycopg directly, and SQLAlchemy
(with Alembic) is imported only when the schema must be migrated.

The library's SQL names parameters ``:name`` (SQLAlchemy's ``text()`` style);
they are rewritten once per statement text into psycopg's ``%(name)s``.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

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

#: The URL schemes served here; any other driver (``postgresql+psycopg2``...) goes through SQLAlchemy.
PSYCOPG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

# ":name" but not the second colon of a "::type" cast.
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def serves_url(url: str) -> bool:
    """Whether :class:`PostgresDatabase` can open ``url`` (a PostgreSQL URL for the psycopg driver)."""
    return urlsplit(url).scheme in PSYCOPG_SCHEMES


@functools.lru_cache(maxsize=256)
def psycopg_sql(sql: str) -> str:
    """``sql`` with ``:name`` parameters as ``%(name)s`` (and a literal ``%`` doubled)."""
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


def libpq_conninfo(url: str) -> str:
    """The libpq URI of a SQLAlchemy-style URL: the same user, password, host, database and query options.

    libpq reads passwords from ``PGPASSWORD`` and ``~/.pgpass`` by itself, so
    a URL without a password works as it does through SQLAlchemy.
    """
    return "postgresql://" + url.partition("://")[2]


class PostgresDatabase(IndexDatabase):
    """A PostgreSQL database through one psycopg connection (autocommit outside :meth:`transaction`)."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        self._errors = psycopg.Error
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
            options = f"{conninfo_to_dict(conninfo).get('options') or ''} {lock_timeout}".strip()
            self.connection = psycopg.connect(make_conninfo(conninfo, options=options), autocommit=True)
        except psycopg.Error as error:
            self._fail(error)
            raise IndexUnavailableError(f"cannot use the index {self.where}: {database_reason(error)}") from None
        self._in_transaction = False

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        try:
            cursor = self.connection.execute(psycopg_sql(sql), params or {})
        except self._errors as error:
            self._fail(error)
            raise
        if cursor.description is None:
            return iter(())
        return _translated_rows(cursor, self._fail, self._errors)

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        try:
            return self.connection.execute(psycopg_sql(sql), params or {}).fetchone()
        except self._errors as error:
            self._fail(error)
            raise

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        batch = list(rows)
        if not batch:
            return
        try:
            with self.connection.cursor() as cursor:
                cursor.executemany(psycopg_sql(sql), batch)
        except self._errors as error:
            self._fail(error)
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        try:
            with self.connection.transaction():
                yield
        except self._errors as error:  # raised by the commit itself
            self._fail(error)
            raise
        finally:
            self._in_transaction = False

    def sqlalchemy_engine(self):
        """An engine on the same database, for Alembic: built (and SQLAlchemy imported) only when migrating."""
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
            url = url.replace("postgres://", "postgresql+psycopg://", 1)
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
