"""What the write commands (delete, compress, modify, undo) share.

They all pick experiments from the index the same way, find each folder
below the archive root the same way (:func:`pycomex_index.paths.experiment_folder`),
and follow the same write-through rule:
change the disk for one experiment, then bring that experiment's index row in
line with the disk, then go on to the next. A crash therefore leaves at most
one experiment out of step, which the next sync mends.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycomex_index.discovery import read_experiment, stat_experiment_folder
from pycomex_index.liveness import INTERRUPTED, RunStates
from pycomex_index.queries import iter_experiments
from pycomex_index.rows import remove_experiments, store_records
from pycomex_index.selection import CompiledExpression, EvaluationFailures
from pycomex_index.store import ArchiveIndex


@dataclass(frozen=True, slots=True)
class SelectedExperiment:
    """An experiment a write command will act on, as the index knew it when it was selected."""

    rel_path: str
    namespace: str
    outcome: str
    read_error: str | None


def select_experiments(
    index: ArchiveIndex,
    selection: CompiledExpression | None,
    failures: EvaluationFailures | None = None,
) -> list[SelectedExperiment]:
    """The experiments ``selection`` keeps, or every experiment (unreadable ones too) for None (``--all``).

    The list is built before anything is changed, so a write never disturbs
    the query that chose what to write.
    """
    return [
        SelectedExperiment(row.rel_path, row.namespace, row.outcome, row.read_error)
        for row in iter_experiments(index, selection, include_unreadable=True, failures=failures)
    ]


@dataclass
class RunningHeldBack:
    """The running experiments a write command leaves alone, and how many of them look interrupted (a guess)."""

    experiments: list[SelectedExperiment]
    look_interrupted: int = 0


def hold_back_running(
    index: ArchiveIndex, selected: list[SelectedExperiment], *, include_running: bool
) -> tuple[list[SelectedExperiment], RunningHeldBack]:
    """Split ``selected`` into what a write command may change and the running experiments it must not.

    An experiment whose status says running is held back unless
    ``include_running``, or unless its death is certain: the plugin's record
    shows its process gone on this host, or its heartbeat stale
    (:mod:`pycomex_index.liveness`). A run only guessed interrupted (the pid in
    its folder name, its file age) is held back all the same.
    """
    kept: list[SelectedExperiment] = []
    held = RunningHeldBack([])
    run_states = RunStates(index)
    for experiment in selected:
        if experiment.outcome != "running" or include_running or run_states.certainly_dead(experiment.rel_path):
            kept.append(experiment)
        else:
            held.experiments.append(experiment)
            held.look_interrupted += run_states.judge(experiment.rel_path).state == INTERRUPTED
    return kept, held


def reindex_experiment(index: ArchiveIndex, rel_path: str) -> bool:
    """Make one experiment's index row equal to its folder now; False when it is no longer an experiment."""
    folder = stat_experiment_folder(index.root, rel_path)
    if folder is None:
        remove_experiments(index.db, index.archive_id, [rel_path])
        return False
    store_records(index.db, index.archive_id, [read_experiment(index.root, folder)])
    return True
