"""The command server: read commands run in a worker forked from a warm process (pycomex_index.command_server).

Real processes throughout: the daemon's watcher starts the server, and the
commands run through the ``pycomex-index`` entry point in subprocesses, so
descriptors, folders, environments and signals cross real process borders.
Every test has a server folder of its own (conftest's isolated_environment).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycomex_index.command_server import SERVER_FOLDER_VARIABLE, SOCKET_SUFFIX, USAGE_FILE_VARIABLE

from .test_daemon import daemon  # noqa: F401 - the fixture that starts (and stops) the archive's daemon
from .test_watcher import wait_until

#: The console script's body: what ``pycomex-index`` runs.
LAUNCHER = "import sys; sys.argv[0] = 'pycomex-index'; from pycomex_index.launch import main; main()"


def launched(*args: str, env: dict[str, str] | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, env=env, timeout=60, **options)


def server_sockets() -> list[Path]:
    return sorted(Path(os.environ[SERVER_FOLDER_VARIABLE]).glob(f"*{SOCKET_SUFFIX}"))


@pytest.fixture
def served(archive: Path, daemon, tmp_path: Path) -> Path:  # noqa: F811 - the imported fixture
    """The archive with its daemon and the daemon's command server running; returns the usage file."""
    daemon()
    assert wait_until(server_sockets, timeout=20), "no command server started"
    return tmp_path / "served-usage.jsonl"


def served_count(usage_file: Path) -> int:
    """How many commands a server ran (the client writes a line for each)."""
    return len(usage_file.read_text().splitlines()) if usage_file.exists() else 0


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["list", "--json"],
        ["tail", "-n", "3"],
        ["tail", "--json"],
        ["overview"],
        ["info", "--json"],
        ["scan"],
        ["scan", "--select", "m['status'] == 'done'"],
        ["list", "--select", "p["],  # a usage error: exit 2 and one line
        ["list", "--select", "q['x'] == 1"],
    ],
    ids=" ".join,
)
def test_a_served_command_prints_and_exits_as_it_does_in_its_own_process(archive, served, command):
    arguments = ["archive", "--path", str(archive), *command]
    in_server = launched(*arguments, env={**os.environ, USAGE_FILE_VARIABLE: str(served)})
    assert served_count(served) == 1, "the command was not served"
    by_itself = launched(*arguments, env={**os.environ, "PYCOMEX_INDEX_NO_SERVER": "1"})
    assert (in_server.returncode, in_server.stdout, in_server.stderr) == (
        by_itself.returncode,
        by_itself.stdout,
        by_itself.stderr,
    )
    assert in_server.stdout or in_server.returncode == 2


def _on_a_terminal(arguments: list[str], environment: dict[str, str]) -> tuple[bytes, int]:
    """What the launcher writes to a terminal (a pseudo-terminal it runs on), and its exit status."""
    import pty

    process, terminal = pty.fork()
    if process == 0:  # the child: the terminal is its stdin, stdout and stderr
        os.execve(sys.executable, [sys.executable, "-c", LAUNCHER, *arguments], environment)
    written = []
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the terminal closed with the child
            break
        if not chunk:
            break
        written.append(chunk)
    _, status = os.waitpid(process, 0)
    os.close(terminal)
    return b"".join(written), os.waitstatus_to_exitcode(status)


def test_a_served_command_on_a_terminal_draws_what_it_draws_in_its_own_process(archive, served):
    arguments = ["archive", "--path", str(archive), "scan"]
    environment = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    in_server = _on_a_terminal(arguments, {**environment, USAGE_FILE_VARIABLE: str(served)})
    assert served_count(served) == 1, "the command was not served"
    by_itself = _on_a_terminal(arguments, {**environment, "PYCOMEX_INDEX_NO_SERVER": "1"})
    assert in_server == by_itself
    assert b"\x1b[" in in_server[0]  # drawn for a terminal: rich's colours


def test_a_served_command_works_in_the_clients_folder_with_its_environment(archive, served):
    times = {}
    for zone in ("UTC", "Asia/Kolkata"):
        environment = {**os.environ, USAGE_FILE_VARIABLE: str(served), "TZ": zone}
        # A relative path is the client's: its working folder is the archive's parent.
        shown = launched(
            "archive", "--path", "results", "tail", "-n", "8", "--json", env=environment, cwd=archive.parent
        )
        assert shown.returncode == 0, shown.stderr
        times[zone] = json.loads(shown.stdout)[0]
        listing = launched("archive", "--path", "results", "tail", "-n", "8", env=environment, cwd=archive.parent)
        times[zone]["shown"] = [line for line in listing.stdout.decode().splitlines() if line.startswith("Started:")]
    assert served_count(served) == 4
    # The same moment, shown in each client's own time zone.
    assert times["UTC"]["start_time"] == times["Asia/Kolkata"]["start_time"]
    assert times["UTC"]["shown"] != times["Asia/Kolkata"]["shown"]
    local = launched(
        "archive", "--path", "results", "tail", "-n", "8",
        env={**os.environ, "PYCOMEX_INDEX_NO_SERVER": "1", "TZ": "Asia/Kolkata"},
        cwd=archive.parent,
    )  # fmt: skip
    assert [line for line in local.stdout.decode().splitlines() if line.startswith("Started:")] == times[
        "Asia/Kolkata"
    ]["shown"]


def test_ctrl_c_reaches_the_served_command(archive, served):
    # Each experiment sleeps in Python's part of the selection: the command runs until interrupted.
    client = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "archive", "--path", str(archive), "list", "--select",
         "__import__('time').sleep(30) or True"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, USAGE_FILE_VARIABLE: str(served)},
    )  # fmt: skip
    time.sleep(2)  # the client connected, the worker is sleeping
    client.send_signal(signal.SIGINT)
    _, stderr = client.communicate(timeout=20)
    assert client.returncode == 130
    assert b"Interrupted." in stderr
    assert served_count(served) == 1  # the server saw its worker end


def test_a_command_run_without_standard_input_is_run_by_itself(archive, served):
    result = launched(
        "archive", "--path", str(archive), "list",
        env={**os.environ, USAGE_FILE_VARIABLE: str(served)},
        preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"results/neural_net/" in result.stdout
    assert served_count(served) == 0


def test_write_commands_are_never_served(archive, served):
    result = launched(
        "archive", "--path", str(archive), "delete", "--select", "m['name'] == 'nothing'", "--yes",
        env={**os.environ, USAGE_FILE_VARIABLE: str(served)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert served_count(served) == 0


def daemon_status(archive: Path) -> dict:
    result = launched("daemon", "status", "--path", str(archive), "--json")
    return json.loads(result.stdout)


def test_the_server_ends_with_its_watcher_and_removes_its_socket(archive, daemon, tmp_path):  # noqa: F811
    watcher = daemon()["pid"]
    sockets = wait_until(server_sockets, timeout=20)
    assert sockets
    server = int(sockets[0].name.removesuffix(SOCKET_SUFFIX))
    assert daemon_status(archive)["command_server"] == str(sockets[0])
    shown = launched("daemon", "status", "--path", str(archive)).stdout.decode()
    assert f"read commands served from {sockets[0]}" in shown
    os.kill(watcher, signal.SIGKILL)  # no clean stop: the server notices on its own
    assert wait_until(lambda: not server_sockets(), timeout=10)
    assert wait_until(lambda: not Path(f"/proc/{server}").exists(), timeout=10)
    # Commands run by themselves again.
    result = launched("archive", "--path", str(archive), "list")
    assert result.returncode == 0 and b"results/neural_net/" in result.stdout
    assert daemon_status(archive)["command_server"] is None


def test_a_dead_servers_socket_is_removed_and_the_command_runs_by_itself(archive, tmp_path):
    folder = Path(os.environ[SERVER_FOLDER_VARIABLE])
    folder.mkdir(mode=0o700, exist_ok=True)
    dead = folder / f"99999{SOCKET_SUFFIX}"
    left_behind = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left_behind.bind(str(dead))  # bound, never listening: as a server killed with SIGKILL leaves it
    left_behind.close()
    usage = tmp_path / "usage.jsonl"
    result = launched("archive", "--path", str(archive), "list", env={**os.environ, USAGE_FILE_VARIABLE: str(usage)})
    assert result.returncode == 0, result.stderr
    assert b"results/neural_net/" in result.stdout
    assert not dead.exists()
    assert served_count(usage) == 0


@pytest.fixture
def server_process() -> subprocess.Popen:
    """A command server started by this process (its parent), as a watcher starts one."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pycomex_index.cli.serve", str(os.getpid())], stderr=subprocess.PIPE
    )
    assert wait_until(server_sockets, timeout=20), process.stderr
    yield process
    process.terminate()
    process.wait(timeout=10)


def test_a_server_declines_other_code_and_commands_that_are_not_reads(server_process):
    from pycomex_index.command_server import _ask, _connect, _frame

    def answer(**request):
        connection = _connect(str(server_sockets()[0]))
        assert connection is not None
        with connection:
            return _ask(connection, _frame({"argv": ["archive", "list"], **request}))

    assert answer(fingerprint="other code") == {"declined": "code"}
    from pycomex_index.command_server import code_fingerprint

    assert answer(fingerprint=code_fingerprint(), argv=["archive", "delete", "--all"]) == {"declined": "command"}
    server_process.terminate()
    server_process.wait(timeout=10)
    assert not server_sockets()  # a clean stop removes its socket


def test_a_server_folder_others_may_enter_is_not_used(tmp_path, monkeypatch):
    from pycomex_index.command_server import is_private_folder

    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert not is_private_folder(str(folder))
    os.chmod(folder, 0o700)
    assert is_private_folder(str(folder))
    monkeypatch.setenv(SERVER_FOLDER_VARIABLE, str(folder))
    os.chmod(folder, 0o777)
    server = subprocess.run(
        [sys.executable, "-m", "pycomex_index.cli.serve", str(os.getpid())], capture_output=True, text=True, timeout=60
    )
    assert server.returncode == 1
    assert server.stderr.startswith("pycomex-index: not serving commands:") and "Traceback" not in server.stderr


@pytest.mark.parametrize(
    ("argv", "is_served"),
    [
        (["archive", "list"], True),
        (["archive", "--path", "scan", "list", "-n", "3"], True),  # an option's value is no command
        (["archive", "--path=/x", "tail", "-n", "3"], True),
        (["archive", "--index", "list", "delete", "--all"], False),
        (["archive", "delete", "--select", "list"], False),
        (["archive", "modify", "--code", "tail"], False),
        (["index", "status"], False),
        (["archive"], False),
        (["list"], False),
        (["--version"], False),
        (["daemon", "start", "--path", "list"], False),
    ],
)
def test_only_archive_read_commands_are_served(argv, is_served):
    from pycomex_index.cli.serve import served
    from pycomex_index.launch import may_be_served

    assert served(argv) is is_served
    if is_served:
        assert may_be_served(argv)  # the client's first look never turns away what the server takes
