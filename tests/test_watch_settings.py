"""WatchSettings: validated once, and the same on both sides of the daemon's command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pycomex_index.cli.watch_commands import watch_command, watch_settings
from pycomex_index.daemon import watcher_command
from pycomex_index.errors import InvalidWatchSettingsError
from pycomex_index.watcher import DEFAULT_POLL_INTERVAL_SECONDS, DEFAULT_RECONCILE_INTERVAL_SECONDS, WatchSettings

SETTINGS = [
    WatchSettings(),
    WatchSettings(polling=True, poll_interval=0.2),
    WatchSettings(poll_interval=1e-3, max_watches=0, reconcile_interval=0.30000000000000004),
    WatchSettings(max_watches=4096, reconcile_interval=86400),
    WatchSettings(quiet_after=0.5),
    WatchSettings(lease_seconds=1.5),
]


def parsed_by_watch_command(argv: list[str]) -> WatchSettings:
    """What the real ``watch`` command builds from these arguments."""
    params = watch_command.make_context("watch", argv).params
    return watch_settings(
        params["polling"],
        params["interval"],
        params["max_watches"],
        params["reconcile_interval"],
        params["quiet_after"],
        params["lease_seconds"],
    )


@pytest.mark.parametrize("settings", SETTINGS, ids=repr)
def test_settings_survive_the_daemon_command_line(settings, tmp_path):
    command = watcher_command(str(tmp_path), str(tmp_path / "index.sqlite3"), str(tmp_path / "daemon.log"), settings)
    assert command[1:4] == ["-m", "pycomex_index", "watch"]
    assert parsed_by_watch_command(command[4:]) == settings


def test_omitted_options_mean_the_defaults():
    settings = parsed_by_watch_command([])
    assert settings == WatchSettings()
    assert (settings.poll_interval, settings.reconcile_interval, settings.max_watches, settings.polling) == (
        DEFAULT_POLL_INTERVAL_SECONDS,
        DEFAULT_RECONCILE_INTERVAL_SECONDS,
        None,
        False,
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("poll_interval", 0),
        ("poll_interval", -1.5),
        ("poll_interval", float("nan")),
        ("poll_interval", float("inf")),
        ("reconcile_interval", 0.0),
        ("reconcile_interval", "5"),
        ("quiet_after", 0),
        ("quiet_after", float("inf")),
        ("lease_seconds", 0),
        ("max_watches", -1),
        ("max_watches", 2.5),
    ],
)
def test_nonsense_is_refused_never_replaced_by_a_default(field, value):
    with pytest.raises(InvalidWatchSettingsError) as raised:
        WatchSettings(**{field: value})
    assert raised.value.field == field
    with pytest.raises(InvalidWatchSettingsError):
        WatchSettings.from_options(**{field: value})


def test_settings_are_frozen_and_whole_numbers_of_seconds_become_floats():
    settings = WatchSettings(poll_interval=3, reconcile_interval=60)
    assert settings == WatchSettings(poll_interval=3.0, reconcile_interval=60.0)
    assert isinstance(settings.poll_interval, float)
    with pytest.raises(AttributeError):
        settings.poll_interval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["watch", "--interval", "0"], "Invalid value for '--interval': must be more than 0 seconds, not 0.0"),
        (
            ["daemon", "start", "--interval", "-2"],
            "Invalid value for '--interval': must be more than 0 seconds, not -2.0",
        ),
        (["watch", "--once", "--reconcile-interval", "0"], "Invalid value for '--reconcile-interval': must be more"),
        (["daemon", "start", "--max-watches", "-1"], "Invalid value for '--max-watches': must be a whole number"),
    ],
)
def test_invalid_settings_are_usage_errors_that_touch_nothing(archive, run_cli, arguments, message):
    result = run_cli(*arguments, "--path", str(archive))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Usage:" in result.output
    assert not (archive / ".pycomex_index").exists()


@pytest.mark.parametrize(
    "code",
    [
        "import pycomex_index.watcher, pycomex_index.daemon, pycomex_index.pidfile",
        "from pycomex_index.cli import main\nsys.argv = ['pycomex-index', 'watch', '--help']\ntry:\n    main()\n"
        "except SystemExit:\n    pass",
        "from pycomex_index.cli import main\nsys.argv = ['pycomex-index', 'daemon', 'start', '--help']\ntry:\n"
        "    main()\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "watch --help", "daemon start --help"],
)
def test_watchdog_is_imported_only_when_a_watcher_starts(code, tmp_path: Path):
    script = (
        f"import sys\n{code}\nsys.stderr.write(repr(sorted(m for m in sys.modules if m.split('.')[0] == 'watchdog')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.stderr.endswith("[]"), result.stderr
