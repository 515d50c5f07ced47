"""Shared fixtures: real pycomex archives copied into tmp_path, and a CLI runner.

Tests never touch the user's files: the index env variable is cleared and the
user cache dir points into the test's own temporary folder.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result


def _import_the_installed_package() -> None:
    """Import pycomex_index as installed (editable or not), never the checkout's folder of that name.

    ``python -m pytest`` puts the checkout first on ``sys.path``; its
    ``pycomex_index/`` lacks ``cli`` and ``migrations``, which exist inside the
    package only once installed. Importing it once with the checkout off the
    path caches the installed package for every later import.
    """
    import sys

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != checkout]
    try:
        import pycomex_index.cli  # noqa: F401 - cached in sys.modules for everything below
    except ImportError as error:
        raise pytest.UsageError(f"pycomex-index is not installed ({error}): pip install -e '.[test]'") from None
    finally:
        sys.path[:] = saved


_import_the_installed_package()

from pycomex_index.cli import cli  # noqa: E402 - after the installed package is in place

FIXTURE_ARCHIVE = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PYCOMEX_INDEX", raising=False)
    # The command servers of a test's daemons, in a folder of the test's own: a short path, as a socket's
    # path has at most 107 bytes (tmp_path is often longer).
    server_folder = tempfile.mkdtemp(prefix="pcx-")
    monkeypatch.setenv("PYCOMEX_INDEX_SERVER_DIR", server_folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.setenv("PYCOMEX_INDEX_NO_PROGRESS", "1")
    # A run made without the plugin, whose folder names a pid that is gone, counts as interrupted once its
    # files are an hour old (pycomex_index.liveness). The fixture archive's files are as old as the checkout,
    # so with the default the killed run would flip from running to interrupted an hour after checking out:
    # tests take file age out of it, and tests/test_liveness.py checks the threshold itself.
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "0")
    yield
    shutil.rmtree(server_folder, ignore_errors=True)


def _copy_writable(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".pycomex_index"))
    for folder, _, files in os.walk(target):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
    return target


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A writable copy of the real pycomex archive in tests/fixtures/results (8 experiments)."""
    return _copy_writable(FIXTURE_ARCHIVE, tmp_path / "results")


#: A ``sitecustomize`` that holds the watcher's catch-up: the first time the sync process opens or lists the
#: archive root, it waits until the test creates ``release`` in the gate folder (at most 60 s).
CATCH_UP_GATE = """
import os, sys, threading, time
gate, root = os.environ.get("PYCOMEX_INDEX_TEST_GATE"), os.environ.get("PYCOMEX_INDEX_TEST_ARCHIVE")
def hold_the_catch_up(event, args):
    # The process the watcher catches up in (pycomex_index.sync_process) names its thread so.
    if event not in ("open", "os.scandir") or threading.current_thread().name != "pycomex-index-sync":
        return
    if not args or not isinstance(args[0], (str, bytes)) or os.path.realpath(os.fsdecode(args[0])) != root:
        return
    blocked = os.path.join(gate, "blocked")
    if os.path.exists(blocked):
        return
    open(blocked, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(gate, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)
if gate and root:
    sys.addaudithook(hold_the_catch_up)
"""


@pytest.fixture
def catch_up_gate(tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder holding :data:`CATCH_UP_GATE` for every Python process started from the test: its ``blocked``
    file says a sync process waits at the archive root, a ``release`` file lets it go on (made at the end too)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(CATCH_UP_GATE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(gate), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PYCOMEX_INDEX_TEST_GATE", str(gate))
    monkeypatch.setenv("PYCOMEX_INDEX_TEST_ARCHIVE", os.path.realpath(archive))
    yield gate
    (gate / "release").touch()


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Invoke the CLI in-process: ``run_cli('archive', 'list', '--path', str(archive))``."""

    def invoke(*args: str, input: str | None = None, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "experiment_meta.json").read_text())


def write_meta(folder: Path, metadata: dict[str, Any] | str | bytes) -> Path:
    """Write an experiment_meta.json (a dict in pycomex's format, or raw text/bytes for broken files)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment_meta.json"
    if isinstance(metadata, bytes):
        path.write_bytes(metadata)
    elif isinstance(metadata, str):
        path.write_text(metadata)
    else:
        path.write_text(json.dumps(metadata, indent=4, sort_keys=True))
    return path


def make_metadata(**overrides: Any) -> dict[str, Any]:
    """A small experiment_meta.json in pycomex's key structure; parameters given as ``parameters={NAME: value}``."""
    parameters = overrides.pop("parameters", {"LEARNING_RATE": 0.001, "BATCH_SIZE": 32})
    metadata: dict[str, Any] = {
        "__optuna__": False,
        "__track__": [],
        "base_path": "/tmp",
        "description": "A test experiment.",
        "duration": 135.0,
        "end_time": 1700000135.0,
        "error_type": None,
        "has_error": False,
        "hooks": {},
        "name": "test_experiment",
        "namespace": "tests",
        "parameters": {
            name: {"description": "", "name": name, "type": type(value).__name__, "usable": True, "value": value}
            for name, value in parameters.items()
        },
        "short_description": "A test experiment.",
        "start_time": 1700000000.0,
        "status": "done",
    }
    metadata.update(overrides)
    return metadata


#: Runs whose order or neighbourhood a backend could get wrong (issue 12): ``rel_path -> start_time``.
#: Two without a start time, pairs with equal start times, and the folder ``exp/run`` with its
#: punctuation siblings, which a non-C collation sorts in among the paths below ``exp/run/``.
AWKWARD_RUNS: dict[str, float | None] = {
    "exp/run/a": 1700000100.0,
    "exp/run/b": 1700000100.0,
    "exp/run#2": 1700000200.0,
    "exp/run+lr": 1700000200.0,
    "exp/run0": 1700000300.0,
    "exp/queued": None,
    "exp/queued#2": None,
}


def add_awkward_runs(archive: Path) -> dict[str, float | None]:
    """Write :data:`AWKWARD_RUNS` into ``archive`` (each named by its path); returns them."""
    for rel_path, start_time in AWKWARD_RUNS.items():
        metadata = make_metadata(name=rel_path)
        if start_time is None:
            del metadata["start_time"]
        else:
            metadata.update(start_time=start_time, end_time=start_time + metadata["duration"])
        write_meta(archive / rel_path, metadata)
    return AWKWARD_RUNS


# --- PostgreSQL: a throwaway cluster for the tests that run on both backends -------------------------

POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    """A PostgreSQL 15 cluster in a temporary folder, reached through a unix socket there (no TCP port).

    PostgreSQL refuses to run as root, and tests run as root here and in CI:
    then the server runs as the unprivileged ``nobody`` (``setpriv``), owning
    only its own folder; the tests connect as the ``postgres`` role, trusted
    on the socket. Settings trade durability for speed (fsync off): a crash
    loses a cluster that is thrown away anyway.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self._admin: Any = None
        self._count = 0
        self._templates: dict[str | None, str] = {}
        self._emptied: list[str] = []  # names of databases at head, with no rows, ready for the next test

    def _run(self, program: str, *arguments: str) -> None:
        import subprocess

        command = [str(POSTGRESQL_BIN / program), *arguments]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> None:
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"
        )
        options = (
            f"-k {self.folder} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str, *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@/{database}?host={self.folder}"

    def _admin_connection(self) -> Any:
        import psycopg

        if self._admin is None:
            self._admin = psycopg.connect(self.url("postgres", driver="postgresql"), autocommit=True)
        return self._admin

    def new_database(self, *, icu_locale: str | None = None, at_head: bool = False) -> str:
        """The SQLAlchemy URL of a new database: empty, or with the index schema when ``at_head``.

        ``icu_locale`` gives it a non-C collation (e.g. ``en-US``). A database
        ``at_head`` is a copy of one migrated once per session and locale
        (``CREATE DATABASE ... TEMPLATE``, ~30 ms instead of ~1 s of migrations
        per test); opening it then finds the schema at head.
        """
        self._count += 1
        name = f"test_{self._count}"
        template = self._migrated_template(icu_locale) if at_head else self._empty_template(icu_locale)
        self._admin_connection().execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.url(name)

    @staticmethod
    def _empty_template(icu_locale: str | None) -> str:
        return f"template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else "template0"

    def _migrated_template(self, icu_locale: str | None) -> str:
        """A database at head to copy (a copy inherits its template's collation)."""
        if icu_locale not in self._templates:
            from pycomex_index.db import SqlAlchemyDatabase
            from pycomex_index.store import ensure_schema

            name = f"index_at_head_{len(self._templates)}"
            self._admin_connection().execute(f"CREATE DATABASE {name} TEMPLATE {self._empty_template(icu_locale)}")
            db = SqlAlchemyDatabase(self.url(name))
            try:
                ensure_schema(db)
            finally:
                db.close()  # CREATE DATABASE ... TEMPLATE refuses while anyone is connected to the template
            self._templates[icu_locale] = name
        return self._templates[icu_locale]

    def borrow_index_database(self) -> str:
        """The URL of a database at head in :data:`POSTGRESQL_COLLATION` holding no rows, for one test.

        Give it back with :meth:`give_back`: emptying it for the next test
        takes ~2 ms, copying the template ~0.2-0.9 s and migrating ~1 s (this
        machine, busy; tests/../report). Each test still has a database of its own.
        """
        if self._emptied:
            return self.url(self._emptied.pop())
        return self.new_database(icu_locale=POSTGRESQL_COLLATION, at_head=True)

    def give_back(self, url: str) -> None:
        """Empty a borrowed database (rows deleted, id sequences restarted) for the next test, or drop it."""
        import psycopg

        from pycomex_index.store import HEAD_REVISION

        name = url.partition("@/")[2].partition("?")[0]  # see url()
        admin = self._admin_connection()
        # A process the test started may still be connected (a daemon on its way out): it must not write later.
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
                connection.execute("SET lock_timeout = '5s'")
                tables = [row[0] for row in connection.execute(_TABLES_SQL)]
                sequences = [row[0] for row in connection.execute(_SEQUENCES_SQL)]
                with connection.transaction():
                    connection.execute("SET LOCAL session_replication_role = replica")  # no foreign-key order needed
                    for table in tables:
                        connection.execute(f'DELETE FROM "{table}"')
                    for sequence in sequences:
                        connection.execute("SELECT setval(%s, 1, false)", (sequence,))
                (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
            if revision == HEAD_REVISION:
                self._emptied.append(name)
                return
        except psycopg.Error:
            pass
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
_SEQUENCES_SQL = "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"


@pytest.fixture(scope="session")
def postgresql_cluster() -> Any:
    """One PostgreSQL cluster for the session, stopped and removed at its end (skipped without PostgreSQL 15)."""
    import tempfile

    if not (POSTGRESQL_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({POSTGRESQL_BIN}): apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install -e '.[test]'")
    # Not under pytest's tmp_path: that folder is root's alone (0700), and the server runs as nobody.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="pycomex-index-pg-")))
    try:
        cluster.start()
        yield cluster
    finally:
        if cluster.data.exists():
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture
def postgresql_url(postgresql_cluster: PostgresCluster) -> str:
    """A new, empty database in the session's cluster, for one test."""
    return postgresql_cluster.new_database()


#: Fixtures through which a test reaches an index; a test using one runs on both backends (see below).
INDEX_FIXTURES = frozenset({"archive", "run_cli"})
#: Fixtures of tests that pick their PostgreSQL database themselves (and compare it with SQLite by hand).
OWN_DATABASE_FIXTURES = frozenset({"postgresql_url", "postgresql_cluster"})
BACKENDS = ("sqlite", "postgresql")
#: SQLite-only tests in files other work owns, marked here so those files stay untouched: node id (or its
#: prefix) -> reason. Their owners may move the mark into the file, or make the test backend-neutral.
SQLITE_ONLY_ELSEWHERE = {
    "tests/test_pycomex_plugin.py": "reads the SQLite index file the plugin writes, with sqlite3",
    "tests/test_packaging.py::test_an_install_path_with_a_percent_sign_creates_a_new_index": (
        "a SQLite file's path must not be URL-decoded"
    ),
}
#: The collation of the suite's PostgreSQL databases: a lab's server most likely sorts text by a language's
#: rules, under which punctuation sorts apart from bytes ("exp/run#2" around "exp/run/"); C would hide that.
POSTGRESQL_COLLATION = "en-US"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that reaches an index on SQLite and on PostgreSQL, unless marked ``sqlite_only(reason)``.

    A test reaches an index through :data:`INDEX_FIXTURES` (the archive, the
    CLI runner), or says so by naming ``index_backend`` in its arguments.
    """
    nodeid = metafunc.definition.nodeid
    for marked, reason in SQLITE_ONLY_ELSEWHERE.items():
        if nodeid == marked or nodeid.startswith(marked + "::"):
            metafunc.definition.add_marker(pytest.mark.sqlite_only(reason))
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only")
    if sqlite_only is not None:
        if not (sqlite_only.args and isinstance(sqlite_only.args[0], str) and sqlite_only.args[0].strip()):
            raise pytest.UsageError(f"{nodeid}: sqlite_only needs a reason, sqlite_only('...')")
        return
    names = set(metafunc.fixturenames)
    asks_for_backend = "index_backend" in inspect.signature(metafunc.function).parameters
    if names & OWN_DATABASE_FIXTURES and not asks_for_backend:
        return
    if asks_for_backend or names & INDEX_FIXTURES:
        metafunc.parametrize("index_backend", BACKENDS, indirect=True)


@pytest.fixture(autouse=True)
def index_backend(
    request: pytest.FixtureRequest, isolated_environment: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The backend of the test's index: SQLite (the default index file), or a new PostgreSQL database.

    Parametrized by :func:`pytest_generate_tests`; a test that is not gets SQLite.
    The PostgreSQL index is named by the environment variable, as a lab would
    (credentials never on a command line), so the test's commands, and the
    processes it starts, are the same on both. The database sorts text by
    :data:`POSTGRESQL_COLLATION` and is already at the schema's head; the
    next test gets it back emptied (:meth:`PostgresCluster.borrow_index_database`).
    """
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield backend
        return
    cluster = request.getfixturevalue("postgresql_cluster")
    url = cluster.borrow_index_database()
    monkeypatch.setenv("PYCOMEX_INDEX", url)
    try:
        yield backend
    finally:
        cluster.give_back(url)


def sqlite_index_at_revision(path: Path, revision: str, archive: Path) -> Any:
    """A SQLite index file migrated only up to ``revision``, holding archive 1 for ``archive`` (the caller closes it)."""
    from pycomex_index.db import SqliteFileDatabase
    from pycomex_index.store import run_migrations

    old = SqliteFileDatabase(str(path))
    run_migrations(old, revision)
    old.execute("INSERT INTO archives (id, root, created_at) VALUES (1, :root, 0)", {"root": str(archive)})
    return old


@contextlib.contextmanager
def statements_sent(db: Any) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their parameters) the code under test sends through ``db.execute`` in the block."""
    sent: list[tuple[str, Any]] = []
    original = db.execute
    db.execute = lambda sql, params=None: sent.append((sql, params)) or original(sql, params)
    try:
        yield sent
    finally:
        del db.execute


def sqlite_plan(db: Any, sql: str, params: Any = None) -> str:
    """SQLite's query plan of a statement, its steps in one line."""
    return " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def index_query(archive: Path, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows of a query on the archive's index, whichever backend holds it (``PYCOMEX_INDEX`` or the default file)."""
    from pycomex_index.store import open_archive_index

    with open_archive_index(str(archive)) as index:
        return [tuple(row) for row in index.db.execute(sql, {"archive_id": index.archive_id, **(params or {})})]


def peek_index(archive: Path, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows (as dicts) of a query on the archive's index, read without opening it through the library.

    For tests that read while a watcher of this very process writes: opening a
    SQLite index through ``open_archive_index`` reads the file with ``open()``,
    and closing that descriptor would drop the watcher's SQLite locks (POSIX
    locks belong to the process). Nothing is registered, so there is no
    ``:archive_id``: the test's index holds its one archive.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    location = os.environ.get("PYCOMEX_INDEX") or str(archive / ".pycomex_index" / "index.sqlite3")
    engine = create_engine(location if "://" in location else f"sqlite:///{location}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params or {})]
    finally:
        engine.dispose()
