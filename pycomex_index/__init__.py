"""pycomex-index: a SQLite index for pycomex experiment archives.

The library never imports click; the command-line interface lives in
``pycomex_index.cli``. Heavy modules (SQLAlchemy, Alembic, watchdog, rich) are
imported inside the functions that need them so that start-up stays fast.
"""

__version__ = "0.1.0"
