"""Credentials for a shared PostgreSQL index (issue 12, item 7): never needed on a command line, never shown.

A password comes from where libpq looks (``PGPASSWORD``, ``~/.pgpass``, a
service file named by ``PGSERVICE``) with a URL that holds none; a URL that
does hold one is masked in every output, and the daemon's watcher process
gets it in its environment, not on the command line ``ps`` shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PASSWORD = "s3cret-Lab"


@pytest.fixture
def password_role(postgresql_cluster) -> str:
    """A new database owned by a role that must give a password (scram) on the socket; the URL without it."""
    import psycopg

    url = postgresql_cluster.new_database()
    database = url.split("@/", 1)[1].split("?")[0]
    role = f"lab_{database}"
    hba = postgresql_cluster.data / "pg_hba.conf"
    rule = f"local all {role} scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())  # before the "trust" lines: checked first
    with psycopg.connect(postgresql_cluster.url("postgres", driver="postgresql"), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        admin.execute(f"ALTER DATABASE {database} OWNER TO {role}")
        admin.execute("SELECT pg_reload_conf()")
    # The postmaster reloads pg_hba.conf on SIGHUP, asynchronously: wait until the role needs its password.
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(
                postgresql_cluster.url(database, driver="postgresql").replace("postgres@", f"{role}@")
            ).close()
        except psycopg.OperationalError:
            break
        assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
        time.sleep(0.05)
    return url.replace("postgres@", f"{role}@")


def _list(archive: Path, url: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pycomex_index", "archive", "list", "--path", str(archive)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_without_libpq_settings(), "PYCOMEX_INDEX": url, **environment},
    )


def _without_libpq_settings() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def test_a_url_without_a_password_fails_when_none_is_found(archive: Path, password_role: str, tmp_path: Path) -> None:
    result = _list(archive, password_role, HOME=str(tmp_path))
    assert result.returncode != 0
    assert "password" in result.stderr


def test_the_password_comes_from_pgpassword(archive: Path, password_role: str, tmp_path: Path) -> None:
    result = _list(archive, password_role, HOME=str(tmp_path), PGPASSWORD=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 8


def test_the_password_comes_from_pgpass(archive: Path, password_role: str, tmp_path: Path) -> None:
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text(f"*:*:*:*:{PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    result = _list(archive, password_role, HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_everything_comes_from_a_service_file(archive: Path, password_role: str, tmp_path: Path) -> None:
    # A lab's one config file: host, database, role and password under a service name; the URL names nothing.
    role = password_role.split("://", 1)[1].split("@", 1)[0]
    database = password_role.split("@/", 1)[1].split("?")[0]
    host = password_role.split("host=", 1)[1]
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[lab]\nhost={host}\ndbname={database}\nuser={role}\npassword={PASSWORD}\n")
    services.chmod(0o600)
    result = _list(archive, "postgresql+psycopg://", HOME=str(tmp_path), PGSERVICEFILE=str(services), PGSERVICE="lab")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 8


def test_the_daemon_never_shows_a_url_password(archive: Path, postgresql_url: str, tmp_path: Path) -> None:
    url = postgresql_url.replace("postgres@", f"postgres:{PASSWORD}@")  # the test cluster trusts; any password does
    environment = {**os.environ, "PYCOMEX_INDEX": url}

    def command(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pycomex_index", "daemon", *arguments, "--path", str(archive)],
            capture_output=True,
            text=True,
            timeout=90,
            env=environment,
        )

    started = command("start", "--polling", "--interval", "0.2")
    assert started.returncode == 0, started.stderr
    try:
        pid = json.loads(command("status", "--json").stdout)["pid"]
        assert b"watch" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for process in filter(str.isdigit, os.listdir("/proc")):  # what `ps -ef` shows
            try:
                assert PASSWORD.encode() not in Path(f"/proc/{process}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
        deadline = time.monotonic() + 30
        while (status := command("status", "--json")).returncode == 0 and json.loads(status.stdout)[
            "mode"
        ] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for arguments in (("status",), ("status", "--json")):
            shown = command(*arguments)
            assert shown.returncode == 0, shown.stderr
            assert PASSWORD not in shown.stdout + shown.stderr
        assert "postgres:***@" in json.loads(command("status", "--json").stdout)["index"]
    finally:
        stopped = command("stop")
    assert stopped.returncode == 0, stopped.stderr
    log = Path(json.loads(command("status", "--json").stdout)["log_file"]).read_text()
    assert "watching" in log and PASSWORD not in log
