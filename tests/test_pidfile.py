"""The pid file: one watcher per archive, and a file nobody holds is stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycomex_index.errors import DaemonAlreadyRunningError
from pycomex_index.pidfile import held_pid_file


def test_one_watcher_per_archive_by_the_pid_file(tmp_path):
    pid_path = str(tmp_path / "daemon.pid")
    with held_pid_file(pid_path, "archive"):
        assert Path(pid_path).read_text().strip() == str(os.getpid())
        with pytest.raises(DaemonAlreadyRunningError, match=f"pid {os.getpid()}"):
            with held_pid_file(pid_path, "archive"):
                pass
    assert not Path(pid_path).exists()


def test_a_pid_file_nobody_holds_is_stale_and_replaced(tmp_path):
    pid_path = tmp_path / "daemon.pid"
    pid_path.write_text("999999\n")
    with held_pid_file(str(pid_path), "archive"):
        assert pid_path.read_text().strip() == str(os.getpid())
