"""One small interface over the index database: SQL text with ``:name`` parameters.

Every query in the library is plain, portable SQL (SQLite and PostgreSQL
both understand it) run through an :class:`IndexDatabase`. A local SQLite
file is driven by the standard library's ``sqlite3`` module, which starts in
a few milliseconds; any other SQLAlchemy URL goes through a SQLAlchemy Core
connection. Importing SQLAlchemy costs ~150 ms, more than a whole ``tail``,
so it is only imported for URLs, migrations and schema checks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

#: How long a writer waits for another writer (the daemon, a second command) before giving up.
BUSY_TIMEOUT_SECONDS = 60.0

Row = Sequence[Any]


class IndexDatabase:
    """What the library needs from a database connection."""

    url: str

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        raise NotImplementedError

    def fetch_one(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        """The first row of a query, or None."""
        return next(iter(self.execute(sql, params)), None)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def sqlalchemy_engine(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteFileDatabase(IndexDatabase):
    """A SQLite file through ``sqlite3``: WAL mode, a busy timeout, foreign keys on."""

    def __init__(self, path: str) -> None:
        import sqlite3

        self.path = path
        self.url = f"sqlite:///{path}"
        self.connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        self._in_transaction = False
        for pragma in (
            f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
        ):
            self.connection.execute(pragma)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        return self.connection.execute(sql, params or {})

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        self.connection.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        # IMMEDIATE takes the write lock up front, so two writers queue on the
        # busy timeout instead of one failing when it upgrades a read lock.
        self.connection.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        else:
            self.connection.execute("COMMIT")
        finally:
            self._in_transaction = False

    def sqlalchemy_engine(self):
        from sqlalchemy import create_engine

        return _configured_engine(create_engine(self.url))

    def close(self) -> None:
        self.connection.close()


class SqlAlchemyDatabase(IndexDatabase):
    """Any database SQLAlchemy can reach by URL (PostgreSQL for a shared index, or SQLite)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.url = url
        self.engine = _configured_engine(create_engine(url))
        self.connection = self.engine.connect()
        self._in_transaction = False

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Row]:
        from sqlalchemy import text

        result = self.connection.execute(text(sql), params or {})
        if not self._in_transaction:
            rows = result.fetchall() if result.returns_rows else []
            self.connection.commit()
            return iter(rows)
        return iter(result) if result.returns_rows else iter(())

    def executemany(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        from sqlalchemy import text

        batch = list(rows)
        if batch:
            self.connection.execute(text(sql), batch)
        if not self._in_transaction:
            self.connection.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        self.connection.commit()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self.connection.rollback()
            raise
        else:
            self.connection.commit()
        finally:
            self._in_transaction = False

    def sqlalchemy_engine(self):
        return self.engine

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def _configured_engine(engine):
    """Give SQLite connections made by SQLAlchemy the same settings as ``SqliteFileDatabase``."""
    if engine.dialect.name != "sqlite":
        return engine
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine
