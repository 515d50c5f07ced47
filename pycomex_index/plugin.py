"""The pycomex plugin: ``pycomex archive …`` runs pycomex-index, and runs are indexed as they happen.

pycomex calls each hook as ``hook(config, **keywords)`` and does not catch
what a hook raises, so every hook here catches everything: a failure of ours
is one warning (:func:`warn_once`), never a broken experiment or CLI. The
keywords are read with ``.get``, so a pycomex that passes more, or renames
one, finds a plugin that does nothing rather than one that raises.

Only the standard library and ``pycomex.plugin`` are imported here: pycomex
imports this module at every start and in every experiment process. The
index and the commands are imported inside the hooks that use them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pycomex.plugin import Plugin, hook

#: Messages already shown in this process: one warning per cause, however many runs meet it.
_warned: set[str] = set()


def warn_once(message: str, cause: str | None = None) -> None:
    """One line on stderr per cause (the message itself unless told). Not ``warnings.warn``: libraries pycomex loads filter warnings away."""
    cause = message if cause is None else cause
    if cause not in _warned:
        _warned.add(cause)
        try:
            sys.stderr.write(f"Warning: pycomex-index: {message}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stderr is no reason to stop an experiment
            pass


def _archive_of(experiment: Any) -> tuple[str, str] | None:
    """(archive root, run folder) of a run that writes an archive; None for a worker of a distributed run."""
    if not getattr(experiment, "is_primary", True):
        return None
    run_folder = getattr(experiment, "path", None)
    archive_root = getattr(experiment, "base_path", None)
    if not run_folder or not archive_root:
        return None
    return os.fspath(archive_root), os.fspath(run_folder)


#: The heartbeat threads of the runs this process runs, by run folder.
_heartbeats: dict[str, Any] = {}


def _heartbeat_failed(error: BaseException) -> None:
    warn_once(
        f"the run's heartbeat could not be written into the archive's index ({type(error).__name__}: {error}); "
        "if this run is killed, it may show as running until its files are an hour old",
        cause="heartbeat",
    )


def _index_run(experiment: Any, moment: str) -> None:
    location = None
    try:
        location = _archive_of(experiment)
        if location is None:
            return
        from pycomex_index.live_runs import RunHeartbeat, index_run, run_heartbeat_interval

        if moment == "start":
            interval = run_heartbeat_interval()
            index_run(*location, liveness="start", heartbeat_interval=interval)
            if interval is not None and location[1] not in _heartbeats:
                heartbeat = RunHeartbeat(*location, interval=interval, on_error=_heartbeat_failed)
                heartbeat.start()
                _heartbeats[location[1]] = heartbeat
        else:
            heartbeat = _heartbeats.pop(location[1], None)
            if heartbeat is not None:
                heartbeat.stop()
            index_run(*location, liveness="end")
    except Exception as error:  # noqa: BLE001 - an experiment never fails because of its index
        warn_once(
            f"the run could not be written into the archive's index at its {moment} ({type(error).__name__}: {error}); "
            "the index catches up at its next sync",
            cause=f"run:{location[1] if location else id(experiment)}",  # one warning per run, not one per hook
        )


def _indexed_archive_group() -> Any:
    """A stand-in for pycomex's ``archive`` group that builds the indexed one on first use.

    pycomex builds its CLI object whenever ``pycomex`` is imported, in every
    experiment process too, and fires ``cli_register_commands`` there. Importing
    our commands costs 25-45 ms (measured on 2 cores); the stand-in costs
    microseconds, and only ``pycomex archive …`` (or pycomex's ``--help``, which
    lists the group's commands) builds the real group
    (:func:`pycomex_index.cli.pycomex_commands.pycomex_archive_group`).
    """
    from collections.abc import Mapping

    import click  # already imported by pycomex when this hook runs (tests/test_layering.py: CLICK_ALLOWED)

    class LazyCommands(Mapping):
        def __init__(self, owner: IndexedArchiveGroup) -> None:
            self.owner = owner

        def __getitem__(self, name: str) -> Any:
            return self.owner.real_group().commands[name]

        def __iter__(self) -> Any:
            return iter(self.owner.real_group().commands)

        def __len__(self) -> int:
            return len(self.owner.real_group().commands)

    class IndexedArchiveGroup(click.Group):
        def __init__(self) -> None:
            super().__init__("archive", short_help="Command group for managing archived experiments (pycomex-index).")
            self._real_group: click.Group | None = None
            self.commands = LazyCommands(self)  # type: ignore[assignment]  # read-only, built on demand

        def real_group(self) -> click.Group:
            if self._real_group is None:
                from pycomex_index.cli.pycomex_commands import pycomex_archive_group

                self._real_group = pycomex_archive_group()
            return self._real_group

        def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> click.Context:
            # The context (and so parsing, --help and invoking) belongs to the real group.
            return self.real_group().make_context(info_name, args, parent=parent, **extra)

        def get_short_help_str(self, limit: int = 45) -> str:
            return self.short_help or ""

    return IndexedArchiveGroup()


class IndexPlugin(Plugin):
    """Registered by pycomex for every ``Plugin`` subclass it finds in ``pycomex_index.main``."""

    @hook("cli_register_commands")
    def replace_archive_commands(self, config: Any, *args: Any, **keywords: Any) -> None:
        cli = keywords.get("cli")
        if cli is None:
            return
        try:
            cli.add_command(_indexed_archive_group(), "archive")
        except Exception as error:  # noqa: BLE001 - pycomex's own archive commands stay then
            warn_once(f"could not put the indexed archive commands into pycomex ({type(error).__name__}: {error})")

    @hook("after_experiment_initialize")
    def index_started_run(self, config: Any, *args: Any, **keywords: Any) -> None:
        _index_run(keywords.get("experiment"), "start")

    @hook("after_experiment_finalize")
    def index_finished_run(self, config: Any, *args: Any, **keywords: Any) -> None:
        _index_run(keywords.get("experiment"), "end")
