"""The hint that ``daemon start`` spares read commands their walk: when, to whom, and how often it is given.

The commands run as real processes with stderr (and, where a test says so,
stdout) on a pseudo-terminal, since the hint is for a person at a terminal.
``PYCOMEX_INDEX_HINT_AFTER=0`` makes the fixture archive's walk count as slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycomex_index.daemon import HINT_FILE_NAME

HINT = "Hint: checking the archive for changes took"


def _run(arguments: list[str], cwd: Path, *, stdout_tty: bool = False, stderr_tty: bool = True, hint_after: str = "0"):
    """(exit code, what reached the terminal, stdout when a pipe, stderr when a pipe)."""
    env = {**os.environ, "PYCOMEX_INDEX_HINT_AFTER": hint_after}
    if hint_after is None:
        del env["PYCOMEX_INDEX_HINT_AFTER"]
    terminal, terminal_end = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pycomex_index", *arguments],
        stdin=subprocess.DEVNULL,
        stdout=terminal_end if stdout_tty else subprocess.PIPE,
        stderr=terminal_end if stderr_tty else subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    os.close(terminal_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, shown.decode(), (stdout or b"").decode(), (stderr or b"").decode()


def _stamp(archive: Path) -> Path:
    return archive / ".pycomex_index" / HINT_FILE_NAME


def test_a_slow_walk_without_a_daemon_gives_the_hint_once_a_day(archive: Path) -> None:
    code, shown, stdout, _ = _run(["archive", "--path", str(archive), "list"], archive.parent)
    assert code == 0 and stdout.count("\n") == 8  # the listing itself, on the pipe
    assert shown.count(HINT) == 1 and f"pycomex-index daemon start --path {archive}" in shown
    assert shown.strip().count("\n") == 0  # one line
    assert _stamp(archive).exists()

    code, shown, _, _ = _run(["archive", "--path", str(archive), "tail"], archive.parent)
    assert code == 0 and HINT not in shown  # said today, for this archive

    a_day_ago = time.time() - 24 * 3600 - 60
    os.utime(_stamp(archive), (a_day_ago, a_day_ago))
    code, shown, _, _ = _run(["archive", "--path", str(archive), "overview"], archive.parent)
    assert code == 0 and HINT in shown
    assert time.time() - _stamp(archive).stat().st_mtime < 600


def test_a_walk_under_a_second_gives_no_hint(archive: Path) -> None:
    code, shown, _, _ = _run(["archive", "--path", str(archive), "list"], archive.parent, hint_after=None)
    assert code == 0 and HINT not in shown and not _stamp(archive).exists()


def test_json_on_a_pipe_never_gets_the_hint_json_at_a_terminal_does(archive: Path) -> None:
    code, shown, stdout, _ = _run(["archive", "--path", str(archive), "list", "--json"], archive.parent)
    assert code == 0 and stdout.startswith("[") and HINT not in shown
    assert not _stamp(archive).exists()  # not used up by a program
    code, shown, _, _ = _run(["archive", "--path", str(archive), "tail", "--json"], archive.parent, stdout_tty=True)
    assert code == 0 and HINT in shown


def test_no_hint_when_stderr_is_no_terminal(archive: Path) -> None:
    code, _, _, stderr = _run(["archive", "--path", str(archive), "list"], archive.parent, stderr_tty=False)
    assert code == 0 and HINT not in stderr and not _stamp(archive).exists()


def test_no_hint_while_a_watcher_runs_even_one_still_catching_up(archive: Path, run_cli) -> None:
    from pycomex_index.heartbeat import write_heartbeat
    from pycomex_index.lease import Holder, acquire_lease
    from pycomex_index.store import open_archive_index

    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    with open_archive_index(str(archive)) as index:  # this test's process, alive: a watcher starting up
        holder = Holder.this_process()
        acquire_lease(index.db, index.archive_id, holder, seconds=60, started_at=time.time())
        write_heartbeat(index, holder, mode="starting", backlog=5, last_change_at=None)
    code, shown, _, _ = _run(["archive", "--path", str(archive), "list"], archive.parent)
    assert code == 0 and HINT not in shown


@pytest.mark.parametrize("arguments", [["index", "sync"], ["index", "status"]])
def test_index_commands_give_no_hint(archive: Path, arguments: list[str]) -> None:
    code, shown, _, _ = _run([*arguments, "--path", str(archive)], archive.parent)
    assert code == 0 and HINT not in shown


def test_the_hint_is_not_given_when_it_cannot_be_remembered(archive: Path) -> None:
    _stamp(archive).mkdir(parents=True)  # a folder where the stamp file goes: writing it fails
    a_day_ago = time.time() - 24 * 3600 - 60
    os.utime(_stamp(archive), (a_day_ago, a_day_ago))
    code, shown, _, _ = _run(["archive", "--path", str(archive), "list"], archive.parent)
    assert code == 0 and HINT not in shown


def test_a_command_failing_after_the_walk_gets_no_hint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pycomex_index.cli.common import give_daemon_hint

    stamp = tmp_path / HINT_FILE_NAME
    try:
        raise BrokenPipeError  # as when `list | head -1` ends: the command's context closes while it is handled
    except BrokenPipeError:
        give_daemon_hint("the hint", str(stamp))
    assert not stamp.exists() and "the hint" not in capsys.readouterr().err
    give_daemon_hint("the hint", str(stamp))
    assert stamp.exists() and "the hint" in capsys.readouterr().err
