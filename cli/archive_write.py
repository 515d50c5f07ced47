"""``archive delete|compress|modify|undo``: the write commands, each writing through to disk and index.

Each command picks experiments like the read commands (``--select`` or
``--all``, exactly one), shows what it will do, and calls the library, which
changes one experiment on disk and then its index row before going on.
"""

from __future__ import annotations

import shutil
import sys

import click

from pycomex_index.cli.common import (
    archive_options,
    compile_or_fail,
    note,
    opened_index,
    progress_bar,
    report_failures,
    select_option,
    warn,
    write_lines,
)
from pycomex_index.formatting import plural, printable

#: Longest a shown value gets in a before → after line.
VALUE_WIDTH = 60
#: Index ids are positive SQLite/PostgreSQL BIGINTs; anything outside is a usage error, not an OverflowError.
ROW_ID = click.IntRange(min=1, max=2**63 - 1)


def all_option(command):
    return click.option(
        "--all", "select_all", is_flag=True, help="Every experiment, including those with unreadable metadata."
    )(command)


def verbose_option(command):
    return click.option("-v", "--verbose", is_flag=True, help="Print each experiment as it is processed.")(command)


def yes_option(command):
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(command)


def _require_choice(select: str | None, select_all: bool, action: str) -> None:
    if select is not None and select_all:
        raise click.UsageError("give either --select or --all, not both")
    if select is None and not select_all:
        raise click.UsageError(f"choose the experiments to {action}: give --select EXPR, or --all for every experiment")


def _preview_limit() -> int:
    """About a screenful of paths; longer previews end in a count."""
    return max(10, shutil.get_terminal_size((80, 24)).lines - 10)


def _shown(index, rel_path: str) -> str:
    """An experiment's path as printed: a newline or an escape sequence in a folder name stays on its line, escaped."""
    return printable(index.display_path(rel_path))


def _path_preview(index, rel_paths: list[str], suffixes: list[str] | None = None) -> list[str]:
    limit = _preview_limit()
    shown = [
        f"  {_shown(index, rel_path)}{printable(suffixes[position]) if suffixes else ''}"
        for position, rel_path in enumerate(rel_paths[:limit])
    ]
    if len(rel_paths) > limit:
        shown.append(f"  ... and {len(rel_paths) - limit} more")
    return shown


def _selected_targets(index, selection, select: str | None, failures) -> list:
    """The experiments a write command acts on; with none, says so (and the caller stops)."""
    from pycomex_index.operations import select_experiments

    targets = select_experiments(index, selection, failures)
    report_failures(failures)
    if not targets:
        _nothing_selected(select)
    return targets


def include_running_option(verb: str):
    """``--include-running`` of delete and modify, which hold back running experiments without it."""
    return click.option(
        "--include-running",
        is_flag=True,
        help=f"Also {verb} experiments whose status is 'running' (not needed for runs certainly interrupted).",
    )


def _held_back_line(count: int, look_interrupted: int, verb: str) -> str:
    """``Held back 2 running experiments (1 looks interrupted, ...); add --include-running to delete them too.``"""
    guessed = ""
    if look_interrupted:
        who = "it looks" if count == 1 else f"{look_interrupted} of them look"
        guessed = f" ({who} interrupted, but that is a guess from a folder name's pid and the files' age)"
    return (
        f"Held back {plural(count, 'running experiment')}{guessed}; "
        f"add --include-running to {verb} {'it' if count == 1 else 'them'} too."
    )


def _nothing_selected(select: str | None) -> None:
    note(
        "No experiments match the selection; nothing was changed."
        if select
        else "There are no archived experiments in the archive."
    )


def _confirm(ctx: click.Context, question: str, yes: bool, what: str, no_terminal: str | None = None) -> None:
    """Ask ``question [y/N]``; anything but y/yes stops the command. Never waits on a stdin that is no terminal.

    ``no_terminal`` is the error shown instead of asking when stdin is no terminal.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            no_terminal
            or f"stdin is not a terminal, so nobody can confirm: nothing was {what}. Add --yes to go ahead without asking."
        )
    answer = click.prompt(f"{question} [y/N]", default="", show_default=False)
    if answer.strip().lower() not in ("y", "yes"):
        click.echo(f"Nothing was {what}.")
        ctx.exit(1)


# ---------------------------------------------------------------------------------------------- delete


@click.command("delete")
@select_option
@all_option
@yes_option
@include_running_option("delete")
@verbose_option
@archive_options
@click.pass_context
def delete_command(ctx, select, select_all, yes, include_running, verbose, archive_path, index_location) -> None:
    """Delete experiments: their folders on disk and their rows in the index.

    Shows what will be deleted and asks first (--yes skips the question; with
    no terminal on stdin it refuses instead of asking). Running experiments
    are kept unless --include-running is given, but for runs certainly
    interrupted (the pycomex plugin recorded their process, now gone).

    \b
    Examples:
      pycomex-index archive delete --select "m['status'] == 'failed'"
      pycomex-index archive delete --select "m['duration'] < 5" --yes -v
      pycomex-index archive delete --all --yes
    """
    from pycomex_index.delete import (
        DELETED,
        FAILED,
        SKIPPED,
        delete_experiments,
        plan_delete,
        remove_deletion_leftovers,
    )
    from pycomex_index.selection import EvaluationFailures

    _require_choice(select, select_all, "delete")
    selection = compile_or_fail(select)
    failures = EvaluationFailures()
    with opened_index(ctx, archive_path, index_location) as index:
        leftovers = remove_deletion_leftovers(index)
        if leftovers:
            note(
                f"Finished removing {plural(leftovers, 'experiment')} an interrupted delete had already taken out of the archive."
            )
        plan = plan_delete(index, selection, include_running=include_running, failures=failures)
        report_failures(failures)
        held_back = _held_back_line(len(plan.held_running), plan.held_looking_interrupted, "delete")
        refused = [
            f"Refused: {_shown(index, experiment.rel_path)}: {printable(reason)}"
            for experiment, reason in plan.holding_others
        ]
        if not plan.targets:
            if plan.held_running:
                write_lines([held_back])
            for line in refused:
                click.echo(line, err=True)
            if not plan.holding_others:
                _nothing_selected(select)
            ctx.exit(1 if refused else 0)
        lines = [f"Selected {plural(len(plan.targets), 'experiment')} for deletion."]
        if plan.held_running:
            lines.append(held_back)
        if not yes:
            lines += ["", "Experiments to delete:", *_path_preview(index, [t.rel_path for t in plan.targets]), ""]
        write_lines(lines)
        for line in refused:
            click.echo(line, err=True)
        if plan.never_exported:
            warn(
                f"{plan.never_exported} of the selected experiments "
                f"{'was' if plan.never_exported == 1 else 'were'} never exported with `archive compress`."
            )
        _confirm(ctx, "Delete these experiments?", yes, "deleted")

        counts = {DELETED: 0, SKIPPED: 0, FAILED: 0}
        with progress_bar("Deleting experiments") as on_progress:
            for done, outcome in enumerate(delete_experiments(index, plan.targets), start=1):
                counts[outcome.status] += 1
                shown = _shown(index, outcome.rel_path)
                message = printable(outcome.message or "")
                if outcome.status == DELETED:
                    if verbose:
                        click.echo(f"Deleted {shown}" + (f" ({message})" if message else ""))
                elif outcome.status == SKIPPED:
                    warn(f"skipped {shown}: {message}")
                else:
                    click.echo(f"Failed: {shown}: {message}", err=True)
                if on_progress:
                    on_progress(done, len(plan.targets))
    summary = f"Deleted {plural(counts[DELETED], 'experiment')}."
    extras = [f"{counts[SKIPPED]} skipped"] if counts[SKIPPED] else []
    extras += [f"{counts[FAILED]} could not be deleted"] if counts[FAILED] else []
    extras += [f"{len(refused)} refused: holding other experiments"] if refused else []
    click.echo(summary[:-1] + f" ({', '.join(extras)})." if extras else summary)
    if counts[FAILED] or refused:
        ctx.exit(1)


# -------------------------------------------------------------------------------------------- compress


@click.command("compress")
@select_option
@all_option
@click.option(
    "--name",
    default="results.zip",
    show_default=True,
    metavar="FILE",
    help="The ZIP to write (relative to the current folder).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace FILE if it exists (otherwise: asked on a terminal, refused without one)."
)
@verbose_option
@archive_options
@click.pass_context
def compress_command(ctx, select, select_all, name, overwrite, verbose, archive_path, index_location) -> None:
    """Compress experiments into a ZIP in pycomex's layout (results/<path>/...) and record the export.

    The ZIP is written under a temporary name and renamed when complete, so
    NAME is never a partial file. An existing NAME is replaced only with
    --overwrite or after a yes on a terminal; a NAME inside the archive is
    always refused. Symlinks out of an experiment are skipped.

    \b
    Examples:
      pycomex-index archive compress --all
      pycomex-index archive compress --select "m['status'] == 'done'" --name successful_runs.zip -v
      pycomex-index archive compress --all --name backup.zip --overwrite
    """
    from pycomex_index.compress import check_export_target, compress_experiments
    from pycomex_index.formatting import format_size
    from pycomex_index.selection import EvaluationFailures

    _require_choice(select, select_all, "compress")
    selection = compile_or_fail(select)
    failures = EvaluationFailures()
    with opened_index(ctx, archive_path, index_location) as index:
        targets = _selected_targets(index, selection, select, failures)
        if not targets:
            return
        replace = check_export_target(index.root, name).exists
        if replace:
            _confirm(
                ctx,
                f"{printable(name)} already exists. Replace it?",
                overwrite,
                "written",
                no_terminal=f"{printable(name)} already exists; add --overwrite to replace it. Nothing was written.",
            )
        click.echo(f"Compressing {plural(len(targets), 'experiment')}...")
        on_experiment = (lambda rel_path: click.echo(f"  {_shown(index, rel_path)}")) if verbose else None
        with progress_bar("Compressing experiments") as on_progress:
            result = compress_experiments(
                index, targets, name, overwrite=replace, on_experiment=on_experiment, on_progress=on_progress
            )
    click.echo(f"Created: {printable(name)} ({format_size(result.size)})")
    if result.skipped:
        warn(f"{plural(len(result.skipped), 'experiment')} vanished before being compressed and are not in the ZIP.")


# ---------------------------------------------------------------------------------------------- modify


def _value(value) -> str:
    from pycomex_index.formatting import shorten
    from pycomex_index.modify import ABSENT

    if value is ABSENT:
        return "(absent)"
    return shorten(repr(value), VALUE_WIDTH)


def _change_lines(changes) -> list[str]:
    """``  NAME: before → after`` for parameters, ``  m['key']: before → after`` for metadata keys."""
    from pycomex_index.modify import ABSENT

    lines = []
    for change in changes:
        if change.kind == "metadata":
            label = f"m[{change.name!r}]"
        elif change.field is not None:
            label = f"{printable(change.name)}[{change.field!r}]"
        else:
            label = printable(change.name)
        if change.renamed_from is not None:
            lines.append(f"  {printable(change.renamed_from)} → {printable(change.name)} (renamed)")
            if change.before == change.after or change.after is change.before:
                continue
        before = "(new)" if change.before is ABSENT and change.kind == "parameter" else _value(change.before)
        after = "(removed)" if change.after is ABSENT else _value(change.after)
        lines.append(f"  {label}: {before} → {after}")
    return lines


@click.command("modify")
@select_option
@all_option
@click.option(
    "--modify-parameters", metavar="CODE", help="Python code changing the parameters dict p (m is there too)."
)
@click.option("--modify-metadata", metavar="CODE", help="Python code changing the metadata dict m (p is there too).")
@click.option("--dry-run", is_flag=True, help="Show every change (before → after) and save nothing.")
@include_running_option("modify")
@verbose_option
@archive_options
@click.pass_context
def modify_command(
    ctx,
    select,
    select_all,
    modify_parameters,
    modify_metadata,
    dry_run,
    include_running,
    verbose,
    archive_path,
    index_location,
) -> None:
    """Change parameters or metadata of experiments with Python code, safely and reversibly.

    Changes to p are saved into parameters[NAME]['value'], including added,
    removed and renamed parameters. Each file is replaced atomically, and its
    previous content is kept so that `archive undo` can restore it.

    Running experiments are left alone unless --include-running is given
    (pycomex rewrites a run's experiment_meta.json when the run ends, which
    would silently drop the change), but for runs certainly interrupted (the
    pycomex plugin recorded their process, now gone).

    \b
    Examples:
      pycomex-index archive modify --all --modify-parameters "p['LEARNING_RATE'] *= 10" --dry-run
      pycomex-index archive modify --select "'LERNING_RATE' in p" --modify-parameters "p['LEARNING_RATE'] = p.pop('LERNING_RATE')"
      pycomex-index archive modify --all --modify-metadata "m['reviewed'] = True; m['version'] = '2.0'"
    """
    from pycomex_index.modify import FAILED, GONE, MODIFIED, UNCHANGED, ModifyCode, modify_experiments
    from pycomex_index.operations import hold_back_running
    from pycomex_index.selection import EvaluationFailures

    if not modify_parameters and not modify_metadata:
        raise click.UsageError("give at least one of --modify-parameters CODE and --modify-metadata CODE")
    _require_choice(select, select_all, "modify")
    selection = compile_or_fail(select)
    code = ModifyCode(
        parameters=compile_or_fail(modify_parameters, mode="exec", what="--modify-parameters"),
        metadata=compile_or_fail(modify_metadata, mode="exec", what="--modify-metadata"),
    )
    failures = EvaluationFailures()
    counts = {MODIFIED: 0, UNCHANGED: 0, GONE: 0, FAILED: 0}
    run_id = None
    with opened_index(ctx, archive_path, index_location) as index:
        targets = _selected_targets(index, selection, select, failures)
        if not targets:
            return
        targets, held = hold_back_running(index, targets, include_running=include_running)
        # After pycomex's own words ("DRY RUN …", "Successfully modified …"), which scripts look for.
        held_back = (
            [_held_back_line(len(held.experiments), held.look_interrupted, "modify")] if held.experiments else []
        )
        if not targets:
            write_lines(held_back)
            return
        if dry_run:
            write_lines(["DRY RUN - No changes will be saved"])
        with progress_bar("Modifying experiments") as on_progress:
            results = modify_experiments(index, targets, code, dry_run=dry_run)
            for done, result in enumerate(results, start=1):
                counts[result.status] += 1
                run_id = result.run_id or run_id
                if result.status == MODIFIED and (dry_run or verbose):
                    write_lines(["", f"Experiment: {_shown(index, result.rel_path)}", *_change_lines(result.changes)])
                elif result.status == UNCHANGED and verbose:
                    write_lines(["", f"Experiment: {_shown(index, result.rel_path)}", "  No changes"])
                elif result.status == GONE and verbose:
                    write_lines(["", f"Experiment: {_shown(index, result.rel_path)}", "  No longer exists"])
                elif result.status == FAILED:
                    click.echo(f"Failed: {_shown(index, result.rel_path)}: {printable(result.error or '')}", err=True)
                if on_progress and not dry_run:
                    on_progress(done, len(targets))
    if dry_run:
        write_lines(["", f"Would modify {plural(counts[MODIFIED], 'experiment')}.", *held_back])
    else:
        # "Successfully modified" is pycomex's wording, which scripts written around pycomex look for.
        summary = f"Successfully modified {plural(counts[MODIFIED], 'experiment')}"
        aside = [f"{counts[UNCHANGED]} unchanged"] if counts[UNCHANGED] else []
        aside += [f"{counts[GONE]} no longer there"] if counts[GONE] else []
        if aside:
            summary += f" ({', '.join(aside)})"
        summary += "."
        if run_id is not None:
            summary += f" Undo with: {(ctx.find_object(dict) or {}).get('archive_command', 'pycomex-index archive')} undo --id {run_id}"
        write_lines(([""] if verbose and counts[MODIFIED] else []) + [summary, *held_back])
    if counts[FAILED]:
        click.echo(f"Failed to modify {plural(counts[FAILED], 'experiment')}; their files are untouched.", err=True)
        ctx.exit(1)


# ------------------------------------------------------------------------------------------------ undo


@click.command("undo")
@click.option(
    "--id", "run_id", type=ROW_ID, default=None, metavar="N", help="The modify to undo (default: the last one)."
)
@yes_option
@verbose_option
@archive_options
@click.pass_context
def undo_command(ctx, run_id, yes, verbose, archive_path, index_location) -> None:
    """Restore the files the last `archive modify` (or modify N) changed.

    A file changed again since that modify is not overwritten. Shows what will
    be restored and asks first, like delete (--yes skips the question).

    \b
    Examples:
      pycomex-index archive undo
      pycomex-index archive undo --id 3 --yes
    """
    from pycomex_index.formatting import format_time
    from pycomex_index.paths import this_host
    from pycomex_index.undo import ALREADY_RESTORED, CONFLICT, RESTORE, RESTORED, plan_undo, undo_modify

    with opened_index(ctx, archive_path, index_location) as index:
        plan = plan_undo(index, run_id)
        if plan is None:
            note("Nothing to undo: no modify has changed files in this archive.")
            return
        run = plan.run
        to_restore = plan.with_action(RESTORE)
        conflicts = plan.with_action(CONFLICT)
        already = plan.with_action(ALREADY_RESTORED)
        # Another host's modify says whose it was (one index, several hosts); this host's reads as it always did.
        elsewhere = f" on {printable(run.host)}" if run.host and run.host != this_host() else ""
        lines = [
            f"Modify {run.id} of {format_time(run.started_at)}{elsewhere} changed {plural(run.file_count, 'file')}:"
        ]
        if run.parameters_code:
            lines.append(f"  --modify-parameters: {run.parameters_code}")
        if run.metadata_code:
            lines.append(f"  --modify-metadata: {run.metadata_code}")
        if to_restore:
            lines += ["", "Experiments to restore:", *_path_preview(index, [item.rel_path for item in to_restore])]
        if already:
            lines += ["", f"{plural(len(already), 'experiment')} already hold their previous content."]
        if conflicts:
            lines += [
                "",
                f"Will not be restored ({len(conflicts)}):",
                *_path_preview(
                    index, [item.rel_path for item in conflicts], [f": {item.reason}" for item in conflicts]
                ),
            ]
        write_lines(lines + [""])
        if to_restore:
            _confirm(ctx, "Restore these files?", yes, "restored")
        restored = refused = 0
        for outcome in undo_modify(index, plan):
            if outcome.status == RESTORED:
                restored += 1
                if verbose:
                    click.echo(f"Restored {_shown(index, outcome.rel_path)}")
            else:
                refused += 1
                click.echo(
                    f"Not restored: {_shown(index, outcome.rel_path)}: {printable(outcome.reason or '')}", err=True
                )
    click.echo(f"Restored {plural(restored, 'file')}.")
    if refused:
        click.echo(
            f"{plural(refused, 'file')} could not be restored; modify {run.id} stays undoable once they are resolved.",
            err=True,
        )
        ctx.exit(1)
