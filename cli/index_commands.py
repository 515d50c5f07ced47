"""``pycomex-index index sync|status``: building and inspecting the index."""

from __future__ import annotations

import click

from pycomex_index.cli.common import archive_options, json_option, opened_index, progress_bar, write_json, write_lines


@click.command("sync")
@archive_options
@click.option(
    "--rebuild",
    is_flag=True,
    help="Read every experiment again, changed or not (the index keeps serving readers meanwhile).",
)
@json_option
@click.pass_context
def sync_command(ctx: click.Context, archive_path, index_location, rebuild: bool, as_json: bool) -> None:
    """Bring the index up to date with the archive (only changed experiments are read).

    \b
    Example:
      pycomex-index index sync --path ./results
      pycomex-index index sync --rebuild
    """
    from dataclasses import asdict

    from pycomex_index.errors import IndexDamagedError
    from pycomex_index.sync import sync_archive

    for attempt in (1, 2):
        try:
            with opened_index(ctx, archive_path, index_location, refresh=False) as index:
                with progress_bar("Indexing experiments") as on_progress:
                    report = sync_archive(index, rebuild=rebuild, on_progress=on_progress)
            break
        except IndexDamagedError as error:
            # Damage met mid-sync was mended (set aside, salvaged) and nothing was shown: sync the fresh index.
            if attempt == 2 or not error.recovered:
                raise
    if as_json:
        write_json({**asdict(report), "index": index.shown_location, "archive": index.root})
        return
    write_lines(
        [
            f"Synced {index.root} in {report.seconds:.2f} s: {report.added} added, {report.updated} updated, "
            f"{report.removed} removed, {report.assets_refreshed} with new assets, {report.unchanged} unchanged"
            + (f" ({report.unreadable} with unreadable metadata)" if report.unreadable else "")
        ]
    )


@click.command("status")
@archive_options
@json_option
@click.pass_context
def status_command(ctx: click.Context, archive_path, index_location, as_json: bool) -> None:
    """Where the index is, how many rows it holds, its schema revision and the last sync.

    \b
    Example:
      pycomex-index index status --path ./results
    """
    from pycomex_index.formatting import format_size, format_time
    from pycomex_index.status import index_status

    with opened_index(ctx, archive_path, index_location, refresh=False, read_only_ok=True) as index:
        status = index_status(index)
    if as_json:
        write_json(status.as_json())
        return
    lines = [
        f"Archive: {status.archive}",
        f"Index: {status.location}" + (f" ({format_size(status.size)})" if status.size is not None else ""),
        f"Schema revision: {status.revision}",
        f"Experiments: {status.experiments}"
        + (f" ({status.unreadable} with unreadable metadata)" if status.unreadable else ""),
        "Last sync: "
        + (
            f"{format_time(status.last_sync_at)} (took {status.last_sync_seconds:.2f} s)"
            if status.last_sync_at
            else "never"
        ),
    ]
    lines.append("Last exports:" if status.exports else "Last exports: none")
    lines += [
        f"  {format_time(export.created_at)}  {export.zip_path} ({export.experiment_count} experiments, "
        f"{format_size(export.size)}, sha256 {export.sha256[:12]})"
        for export in status.exports
    ]
    write_lines(lines)
