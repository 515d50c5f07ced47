"""A query started ahead of its reader: in a thread, on a connection of its own (see
:meth:`pycomex_index.db.SqliteFileDatabase.execute_pieces`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class QueryAhead:
    """One query started in a thread on a connection of its own; its cursor is taken when its rows are wanted."""

    def __init__(self, connection: Any, sql: str, params: dict[str, Any]) -> None:
        self.connection = connection
        self._cursor: Any = None
        self._error: BaseException | None = None
        # A daemon thread: a command ended by Ctrl-C does not wait for a query nobody will read.
        self._thread = threading.Thread(target=self._run, args=(sql, params), name="query ahead", daemon=True)
        self._thread.start()

    def _run(self, sql: str, params: dict[str, Any]) -> None:
        try:
            self._cursor = self.connection.execute(sql, params)
        except BaseException as error:  # handed to the thread that reads the rows
            self._error = error

    def cursor(self, fail: Callable[[BaseException], None]) -> Any:
        """The started query's cursor, once its first row is ready; its error (through ``fail``) if it failed."""
        self._thread.join()
        if self._error is not None:
            fail(self._error)
            raise self._error
        return self._cursor

    def close(self) -> None:
        """Stop the query if it still runs (its rows are no longer wanted) and close its connection."""
        # Again until the thread ends: an interrupt before its statement has started is lost (SQLite ignores one
        # while no statement runs), and the thread may not have been given Python's lock to start it yet.
        while self._thread.is_alive():
            self.connection.interrupt()
            self._thread.join(0.01)
        self.connection.close()
