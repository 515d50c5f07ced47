"""``pycomex-index watch`` and ``pycomex-index daemon start|stop|status``: keeping the index fresh in the background."""

from __future__ import annotations

import click

from pycomex_index.cli.common import (
    archive_location,
    archive_options,
    json_option,
    note,
    progress_bar,
    write_json,
    write_lines,
)

#: ``daemon status`` exits with this when no daemon runs (as LSB init scripts do).
EXIT_NOT_RUNNING = 3


#: The option of ``watch`` and ``daemon start`` that sets each :class:`~pycomex_index.watcher.WatchSettings` field.
SETTING_OPTIONS = {
    "polling": "--polling",
    "poll_interval": "--interval",
    "max_watches": "--max-watches",
    "reconcile_interval": "--reconcile-interval",
    "quiet_after": "--quiet-after",
    "lease_seconds": "--lease-seconds",
}


def watcher_options(command):
    """``--polling``, ``--interval`` and the hidden tuning knobs shared by ``watch`` and ``daemon start``.

    Their values are checked by :class:`~pycomex_index.watcher.WatchSettings` (see :func:`watch_settings`),
    not here, so the library and the command line keep one rule.
    """
    command = click.option(
        "--lease-seconds",
        type=float,
        default=None,
        hidden=True,
        help="Seconds the watcher's lease lasts unless renewed; then another host may take over (default 10).",
    )(command)
    command = click.option(
        "--quiet-after",
        type=float,
        default=None,
        hidden=True,
        help="Seconds without a change after which a running experiment is taken for interrupted (default a day).",
    )(command)
    command = click.option("--reconcile-interval", type=float, default=None, hidden=True)(command)
    command = click.option(
        "--max-watches",
        type=int,
        default=None,
        hidden=True,
        help="Most inotify watches to use before polling (env PYCOMEX_INDEX_MAX_WATCHES).",
    )(command)
    command = click.option(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Seconds between two polls when polling (fractions allowed; default 2).",
    )(command)
    command = click.option(
        "--polling",
        is_flag=True,
        help="Poll instead of using inotify: for network filesystems, where inotify sees no writes from other hosts.",
    )(command)
    return command


def watch_settings(
    polling: bool,
    interval: float | None,
    max_watches: int | None,
    reconcile_interval: float | None,
    quiet_after: float | None = None,
    lease_seconds: float | None = None,
):
    """The :class:`~pycomex_index.watcher.WatchSettings` these options ask for; a usage error when invalid."""
    from pycomex_index.errors import InvalidWatchSettingsError
    from pycomex_index.watcher import WatchSettings

    try:
        return WatchSettings.from_options(
            polling=polling,
            poll_interval=interval,
            max_watches=max_watches,
            reconcile_interval=reconcile_interval,
            quiet_after=quiet_after,
            lease_seconds=lease_seconds,
        )
    except InvalidWatchSettingsError as error:
        raise click.BadParameter(error.reason, param_hint=f"'{SETTING_OPTIONS[error.field]}'") from None


@click.command("watch")
@archive_options
@watcher_options
@click.option("--once", is_flag=True, help="Catch up with the archive once, then exit.")
@click.option("--log-file", default=None, hidden=True, help="Log here (rotated), not to stderr: for `daemon start`.")
@click.pass_context
def watch_command(
    ctx,
    archive_path,
    index_location,
    polling,
    interval,
    max_watches,
    reconcile_interval,
    quiet_after,
    lease_seconds,
    once,
    log_file,
) -> None:
    """Keep the index up to date while experiments run, in the foreground (Ctrl-C stops).

    Catches up with one sync, then applies each change as it happens, so
    read commands skip the disk walk. Watches the archive root, namespace
    folders and running experiments (not every folder); falls back to
    polling when the inotify watch limit is reached or with --polling.

    \b
    Examples:
      pycomex-index watch --path ./results
      pycomex-index watch --path /nfs/results --polling --interval 5
      pycomex-index watch --once
    """
    path, location = archive_location(ctx, archive_path, index_location)
    settings = watch_settings(polling, interval, max_watches, reconcile_interval, quiet_after, lease_seconds)
    if once:
        from pycomex_index.watcher import watch_once

        with progress_bar("Indexing experiments") as on_progress:
            root, report = watch_once(path, location, on_progress=on_progress)
        write_lines(
            [
                f"Caught up with {root} in {report.seconds:.2f} s: {report.added} added, {report.updated} updated, "
                f"{report.removed} removed, {report.assets_refreshed} with new assets, {report.unchanged} unchanged"
            ]
        )
        return

    from pycomex_index.daemon import EXIT_ALREADY_RUNNING, configure_logging, logger, run_watcher
    from pycomex_index.errors import DaemonAlreadyRunningError

    configure_logging(log_file)

    def on_ready(status) -> None:
        if not log_file:
            note(f"Watching ({status.note}). Ctrl-C stops.")

    from pycomex_index.cli.serve import start_command_server

    server = start_command_server(log_file)
    try:
        run_watcher(path, location, settings, on_ready=on_ready)
    except DaemonAlreadyRunningError as error:
        if log_file:
            logger.error("%s", error)
            ctx.exit(EXIT_ALREADY_RUNNING)
        raise
    except Exception as error:
        if log_file:
            logger.exception("the watcher could not run: %s", error)
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    if not log_file:
        note("Stopped.")


@click.group("daemon")
def daemon_group() -> None:
    """Run the watcher in the background: one per archive, with a pid file and a log.

    One per archive across hosts too: with the archive on a shared
    filesystem and the index in PostgreSQL, the watcher holds a lease in the
    index; start on another host names it and starts nothing, status shows
    it from any host, and stop only stops a watcher of its own host.

    \b
    Examples:
      pycomex-index daemon start --path ./results
      pycomex-index daemon status --path ./results
      pycomex-index daemon stop --path ./results
    """


@daemon_group.command("start")
@archive_options
@watcher_options
@click.pass_context
def start_command(
    ctx, archive_path, index_location, polling, interval, max_watches, reconcile_interval, quiet_after, lease_seconds
) -> None:
    """Start the background watcher and return at once.

    Its pid file and log (daemon.<host>.pid, daemon.log) are in the archive's
    .pycomex_index folder, or beside the index file when --index puts it
    elsewhere.

    \b
    Examples:
      pycomex-index daemon start --path ./results
      pycomex-index daemon start --path /nfs/results --index ~/indexes/results.sqlite3 --polling --interval 5
    """
    from pycomex_index.daemon import start_daemon

    path, location = archive_location(ctx, archive_path, index_location)
    settings = watch_settings(polling, interval, max_watches, reconcile_interval, quiet_after, lease_seconds)
    status = start_daemon(path, location, settings)
    write_lines([f"Started the daemon for {status.archive} (pid {status.pid}); log: {status.log_file}"])


@daemon_group.command("stop")
@archive_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="How long to wait for the daemon to finish its batch (default a minute).",
)
@click.pass_context
def stop_command(ctx, archive_path, index_location, timeout) -> None:
    """Stop the background watcher once it has finished the batch it is applying.

    Only a watcher of this host: one running on another host is named (exit 1), never signalled.

    \b
    Example:
      pycomex-index daemon stop --path ./results
    """
    from pycomex_index.daemon import stop_daemon

    path, location = archive_location(ctx, archive_path, index_location)
    pid = stop_daemon(path, location, timeout=timeout)
    if pid is None:
        note("The daemon is not running.")
    else:
        write_lines([f"Stopped the daemon (pid {pid})."])


@daemon_group.command("status")
@archive_options
@json_option
@click.pass_context
def status_command(ctx, archive_path, index_location, as_json) -> None:
    """Whether the daemon runs: host, pid, since when, last change applied, backlog, mode (exit 3: not running).

    \b
    Examples:
      pycomex-index daemon status --path ./results
      pycomex-index daemon status --json | jq .mode
    """
    from pycomex_index.daemon import daemon_status
    from pycomex_index.formatting import format_time
    from pycomex_index.paths import this_host

    path, location = archive_location(ctx, archive_path, index_location)
    status = daemon_status(path, location)
    if as_json:
        write_json(status.as_json())
    elif not status.running:
        write_lines(["not running"])
    else:
        last_change = format_time(status.last_change_at) if status.last_change_at else "never"
        backlog = status.backlog if status.backlog is not None else 0
        where = "" if status.host == this_host() else f" on host {status.host}"
        lines = [
            f"running{where} (pid {status.pid}, since {format_time(status.since)}, last change applied {last_change}, "
            f"backlog {backlog}, mode {status.mode})"
        ]
        if status.note:
            lines.append(f"  {status.note}")
        if status.command_server:
            lines.append(f"  read commands served from {status.command_server}")
        if status.heartbeat_late:
            lines.append("  its heartbeat is late (busy or stuck): commands check the disk themselves meanwhile")
        write_lines(lines)
    if not status.running:
        ctx.exit(EXIT_NOT_RUNNING)


def register(cli: click.Group) -> None:
    cli.add_command(watch_command)
    cli.add_command(daemon_group)
