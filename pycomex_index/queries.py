"""Reading experiments out of the index, with a ``--select`` expression as an exact post-filter.

:func:`iter_selected` is the one road from index rows to what commands show:
it runs one SQL query ordered by start time and, when an expression is
given, lets SQL decide it where it can (see :mod:`pycomex_index.pushdown`);
only the rows SQL cannot decide get ``m``/``p``, built from the narrowest
columns the expression needs, and are kept when the expression is true.
:func:`iter_selected_values` is the same road for a caller that wants the
kept rows' columns alone, a list of them at a time (``list``).
Experiments whose metadata could not be read are selected by nothing but
"everything".
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from pycomex_index.db import Row
from pycomex_index.discovery import EXPERIMENT_COLUMNS, ExperimentColumns, Outcome, read_metadata
from pycomex_index.liveness import RunStates
from pycomex_index.paths import experiment_folder, path_on_disk
from pycomex_index.pushdown import prefilter_for
from pycomex_index.selection import (
    BUILT_KEYS,
    READS_NO_METADATA,
    READS_SUMMARY,
    CompiledExpression,
    EvaluationFailures,
    build_metadata,
    evaluate,
    evaluation_globals,
    rebind_evaluation_globals,
)
from pycomex_index.store import ArchiveIndex

#: SQLite's own NULL order (NULL below every value), spelled out so PostgreSQL (NULL above) agrees; SQLite
#: plans the same with it, since it is its default.
_NULLS = {"ASC": "NULLS FIRST", "DESC": "NULLS LAST"}


@dataclass(slots=True)
class ExperimentRow(ExperimentColumns):
    """One experiment as the index knows it: its row, and ``parameters`` when asked for."""

    id: int
    parameters: dict[str, Any] | None = None
    #: ``parameters`` may hold NaN or Infinity, which JSON output must spell out (see :func:`json_ready`).
    parameters_need_python: bool = False

    @classmethod
    def from_columns(cls, values: Any) -> ExperimentRow:
        row = cls(*values)
        if row.has_error is not None:
            row.has_error = bool(row.has_error)  # SQLite stores booleans as 0/1
        return row


#: The columns :meth:`ExperimentRow.from_columns` takes, in its fields' order.
_ROW_COLUMNS = tuple(f"e.{column}" for column in EXPERIMENT_COLUMNS) + ("e.id",)
_LISTING_COLUMNS = ("e.rel_path", "e.outcome", "e.duration")
#: Whether the row's documents are in Python's JSON dialect (see ExperimentFields.needs_python).
_NEEDS_PYTHON = "f.needs_python"


def iter_experiments(
    index: ArchiveIndex, selection: CompiledExpression | None = None, **options: Any
) -> Iterator[ExperimentRow]:
    """:func:`iter_selected` (same options) as :class:`ExperimentRow` objects.

    For commands that show or change whole experiments.
    """
    # With the parameters comes the flag that says whether they need care in JSON output.
    columns = _ROW_COLUMNS + (_NEEDS_PYTHON,) if options.get("with_parameters") else _ROW_COLUMNS
    width = len(_ROW_COLUMNS)
    for values, parameters, _ in iter_selected(index, columns, selection, **options):
        row = ExperimentRow.from_columns(values[:width])
        row.parameters = parameters
        row.parameters_need_python = len(values) > width and bool(values[width])
        yield row


@overload
def iter_selected(
    index: ArchiveIndex,
    columns: Sequence[str],
    selection: CompiledExpression | None = None,
    *,
    also_evaluates: CompiledExpression,
    newest_first: bool = False,
    include_unreadable: bool = True,
    limit: int | None = None,
    with_parameters: bool = False,
    failures: EvaluationFailures | None = None,
) -> Iterator[tuple[Row, dict[str, Any] | None, dict[str, Any]]]: ...


@overload
def iter_selected(
    index: ArchiveIndex,
    columns: Sequence[str],
    selection: CompiledExpression | None = None,
    *,
    also_evaluates: None = None,
    newest_first: bool = False,
    include_unreadable: bool = True,
    limit: int | None = None,
    with_parameters: bool = False,
    failures: EvaluationFailures | None = None,
) -> Iterator[tuple[Row, dict[str, Any] | None, None]]: ...


def iter_selected(
    index: ArchiveIndex,
    columns: Sequence[str],
    selection: CompiledExpression | None = None,
    *,
    also_evaluates: CompiledExpression | None = None,
    newest_first: bool = False,
    include_unreadable: bool = True,
    limit: int | None = None,
    with_parameters: bool = False,
    failures: EvaluationFailures | None = None,
) -> Iterator[tuple[Row, dict[str, Any] | None, dict[str, Any] | None]]:
    """Yield ``(values, parameters, namespace)`` for the experiments (ordered by start time) that ``selection`` keeps.

    ``values`` holds the SQL ``columns`` (over ``e`` = experiments);
    ``parameters`` the parameter values when ``with_parameters``;
    ``namespace`` the ``m``/``p`` namespace when ``also_evaluates`` (``scan
    --group``) names a second expression the caller will run on it: one dict
    reused for every row (:func:`rebind_evaluation_globals`), so it is valid
    until the next row is asked for. Only what the caller asked for is
    yielded: a listing of many rows must not keep every m and p alive.
    ``failures`` counts rows on which ``selection`` raised (they are not selected).
    """
    read = _SelectedRead(
        index,
        columns,
        selection,
        also_evaluates=also_evaluates,
        newest_first=newest_first,
        include_unreadable=include_unreadable,
        limit=limit,
        with_parameters=with_parameters,
        failures=failures,
    )
    # Chained in C: no generator of this function's own steps in between the caller and each batch's rows. islice
    # takes no row past the limit, so no row past the last one kept is evaluated (nor is the query run for none).
    rows = itertools.chain.from_iterable(map(read.selected_in, read.batches()))
    return rows if limit is None else itertools.islice(rows, max(limit, 0))


def iter_selected_values(
    index: ArchiveIndex,
    columns: Sequence[str],
    selection: CompiledExpression | None = None,
    *,
    include_unreadable: bool = True,
    failures: EvaluationFailures | None = None,
) -> Iterator[list[Row]]:
    """The ``values`` :func:`iter_selected` yields (same arguments), a list of them at a time.

    For a caller that wants every kept row's columns alone (``list``): each
    batch's kept rows are gathered by ``list()``, not yielded one by one.
    """
    read = _SelectedRead(
        index, columns, selection, include_unreadable=include_unreadable, failures=failures, values_alone=True
    )
    return map(list, map(read.selected_in, read.batches()))


class _SelectedRead:
    """One read of the rows a selection keeps: its SQL, and Python's part in the rows SQL leaves undecided.

    The query is one SQL query ordered by start time (on a big archive, in two
    halves run at once: :func:`_start_time_halving`); when an expression is
    given SQL decides it where it can (:mod:`pycomex_index.pushdown`); only
    the rows SQL cannot decide get ``m``/``p``, built from the narrowest
    columns the expression needs (``selected_in``).
    """

    def __init__(
        self,
        index: ArchiveIndex,
        columns: Sequence[str],
        selection: CompiledExpression | None,
        *,
        also_evaluates: CompiledExpression | None = None,
        newest_first: bool = False,
        include_unreadable: bool = True,
        limit: int | None = None,
        with_parameters: bool = False,
        failures: EvaluationFailures | None = None,
        values_alone: bool = False,
    ) -> None:
        """``values_alone``: :meth:`selected_in` yields a kept row's values, not the triple :func:`iter_selected` yields."""
        import json

        import orjson

        expressions = [expression for expression in (selection, also_evaluates) if expression is not None]
        reads_metadata = max((expression.reads_metadata for expression in expressions), default=READS_NO_METADATA)
        reads_parameters = any(expression.reads_parameters for expression in expressions)
        # m['state'] judges a running run by its files (pycomex_index.liveness): only for an expression that can see it.
        derives_state = any(expression.may_read_metadata_key("state") for expression in expressions)
        builds_metadata = any(expression.may_read_metadata_key(key) for expression in expressions for key in BUILT_KEYS)
        failures = failures if failures is not None else EvaluationFailures()
        selected: list[str] = list(columns)
        join = ""
        # Reading every row, it is faster to let SQLite sort them than to walk the start-time index, which
        # fetches each row out of storage order (+ keeps the index from serving the ORDER BY); a limited
        # read walks the index, so it stops as soon as it has enough.
        if limit is None:
            (table, archive_condition), sort_key = experiments_table(index), "+e.start_time"
        else:
            table, archive_condition, sort_key = "experiments e", _ARCHIVE_CONDITION, "e.start_time"
        conditions = [archive_condition] if archive_condition else []
        params: dict[str, Any] = {"archive_id": index.archive_id}
        prefilter = prefilter_for(selection) if selection else None
        verdict_at = None
        if prefilter is not None:
            conditions.append(prefilter.condition)
            params.update(prefilter.params)
            failures.pushed_down, failures.sql_condition = prefilter.pushed, prefilter.condition
            verdict_at = len(selected)
            selected.append(prefilter.verdict)
        # The columns Python reads to build m and p, at these positions among them.
        for_python: list[str] = []
        parameters_at = summary_at = path_at = needs_python_at = None
        if reads_parameters or with_parameters:
            parameters_at = len(for_python)
            for_python.append("f.parameters_json")
        if reads_metadata == READS_SUMMARY:
            summary_at = len(for_python)
            for_python.append("f.summary_json")
        if parameters_at is not None or summary_at is not None:
            # Documents in Python's dialect (NaN, big integers...) are read by the json module; the rest by orjson.
            needs_python_at = len(for_python)
            for_python.append(_NEEDS_PYTHON)
        if reads_metadata != READS_NO_METADATA:
            path_at = len(for_python)
            for_python += ["e.rel_path", "e.namespace", "e.outcome"]
        documents_join = (
            " LEFT JOIN experiment_fields f ON f.experiment_id = e.id" if needs_python_at is not None else ""
        )
        # Python evaluates only the rows SQL left undecided: unless the caller wants every row's m or p, the
        # others need none of the columns it reads, which a second query fetches for the undecided rows alone
        # (see _PythonColumns).
        python_columns = None
        if verdict_at is not None and not with_parameters and also_evaluates is None and for_python:
            python_columns = _PythonColumns(
                index, for_python, documents_join, verdict_at=verdict_at, id_at=len(selected)
            )
            selected.append("e.id")
        else:
            offset = len(selected)
            parameters_at, summary_at, path_at, needs_python_at = (
                None if at is None else offset + at for at in (parameters_at, summary_at, path_at, needs_python_at)
            )
            selected += for_python
            join = documents_join
        if prefilter is not None:
            join += "".join(" " + parameter_join for parameter_join in prefilter.joins)
        if not include_unreadable or expressions:
            # After the prefilter's condition: SQLite tests the conditions in this order, and a row the
            # prefilter drops is not read for its outcome too.
            conditions.append(f"e.outcome <> '{Outcome.ERROR.value}'")
        direction = "DESC" if newest_first else "ASC"

        def query(*more_conditions: str) -> str:
            every_condition = [*conditions, *more_conditions]
            where = f" WHERE {' AND '.join(every_condition)}" if every_condition else ""
            sql = (
                f"SELECT {', '.join(selected)} FROM {table}{join}{where} "
                f"ORDER BY {sort_key} {direction} {_NULLS[direction]}, e.rel_path {direction}"
            )
            return sql + f" LIMIT {int(limit)}" if limit is not None and selection is None else sql

        split_at = _start_time_halving(index) if limit is None else None
        if split_at is None:
            self.pieces = [(query(), params)]
        else:
            # The rows ordered by start time in two halves, older (with the unknown start times, which sort first)
            # and newer; newest first, the newer half comes first.
            halves = [query(_OLDER_HALF), query(_NEWER_HALF)]
            self.pieces = [(sql, {**params, "split_at": split_at}) for sql in halves[:: -1 if newest_first else 1]]
        self.db, self.limit = index.db, limit
        self.width = width = len(columns)
        self.failures = failures
        #: Where the row's SQL verdict is (1: selected for certain; NULL: Python decides), when SQL gives one.
        self.verdict_at = verdict_at
        self.python_columns = python_columns
        fast_loads, exact_loads = orjson.loads, json.loads
        folder_prefix = index.root.rstrip("/") + "/"
        namespace = evaluation_globals(None, None)
        run_states = RunStates(index)
        evaluates_also = also_evaluates is not None
        # Where SQL found the selection true for certain and the caller wants the columns alone (list, the ids of
        # overview), the row is yielded as it came: nothing is parsed, built or evaluated for it.
        columns_alone_at = verdict_at if not with_parameters and not evaluates_also else None

        # Each column position is set exactly when its column was selected (parameters_at: reads_parameters or
        # with_parameters; summary_at: READS_SUMMARY; path_at: any metadata), so the tests below are on the
        # positions themselves.
        def selected_in(batch: list[Row]) -> Iterator[Any]:
            """What :func:`iter_selected` yields for each selected row of a :meth:`batches` list, in order.

            One generator per batch, not a call per row: a call to a closure this
            size costs ~1,100 instructions in CPython 3.11 (2% of ``scan --group``).
            """
            nonlocal namespace
            for values in batch:
                if columns_alone_at is not None and values[columns_alone_at] == 1:
                    failures.selected_in_sql += 1
                    yield values[:width] if values_alone else (values[:width], None, None)
                    continue
                # Where SQL found the selection true for certain, Python need not evaluate it again.
                decided = verdict_at is not None and values[verdict_at] == 1
                evaluates_selection = selection is not None and not decided
                builds_namespace = evaluates_selection or evaluates_also
                read = values if python_columns is None else python_columns.of(values)
                if read is None:
                    continue  # removed from the index since the rows were read
                parameters = None
                loads = exact_loads if needs_python_at is not None and read[needs_python_at] else fast_loads
                if parameters_at is not None and (with_parameters or builds_namespace):
                    text = read[parameters_at]
                    parameters = loads(text) if text else {}
                if builds_namespace:
                    metadata = None
                    if path_at is not None:
                        rel_path = read[path_at]
                        if summary_at is not None:
                            summary = read[summary_at]
                            metadata = loads(summary) if summary else {}
                        else:
                            # The whole document is not in the index: read the file, after SQL has narrowed the rows.
                            try:
                                metadata = read_metadata(folder_prefix + path_on_disk(rel_path))
                            except ValueError as error:
                                failures.record(error)
                                continue
                        if builds_metadata:
                            path = folder_prefix + path_on_disk(rel_path)
                            metadata = build_metadata(metadata, path=path, namespace=read[path_at + 1])
                        if derives_state:
                            _derive_state(metadata, run_states, rel_path, read[path_at + 2])
                    namespace = rebind_evaluation_globals(namespace, metadata, parameters)
                    if selection is not None and not decided:  # evaluates_selection, spelled out for the type checker
                        failures.evaluated += 1
                        try:
                            if not evaluate(selection, namespace):
                                continue
                        except Exception as error:
                            failures.record(error)
                            continue
                if decided:
                    failures.selected_in_sql += 1
                if values_alone:
                    yield values[:width]
                else:
                    yield (
                        values[:width],
                        (parameters if with_parameters else None),
                        (namespace if also_evaluates else None),
                    )

        self.selected_in = selected_in

    def batches(self) -> Iterator[list[Row]]:
        """The query's rows, a list at a time, with the columns Python reads looked up for each list."""
        for batch in _batches(self.db.execute_pieces(self.pieces), self.limit):
            if self.python_columns is not None:
                self.python_columns.look_up(batch)
            yield batch


#: Below this many runs a read of every row is one query (measured: 10,000 runs read no faster in halves;
#: 100,000 a sixth faster).
HALVING_FROM_ROWS = 20_000
# The two halves of the rows by start time. A run keeps its start time once stored, so each half read on its own
# connection (see IndexDatabase.execute_pieces) gives a run in exactly one of them.
_OLDER_HALF = "(e.start_time < :split_at OR e.start_time IS NULL)"
_NEWER_HALF = "e.start_time >= :split_at"


def _start_time_halving(index: ArchiveIndex) -> float | None:
    """The start time that halves the archive's runs, when a read of all of them is worth running in two halves."""
    db = index.db
    if not db.runs_queries_ahead():
        return None
    params = {"archive_id": index.archive_id}
    runs = db.fetch_row(
        "SELECT COALESCE(SUM(experiments), 0) FROM experiment_summary WHERE archive_id = :archive_id", params
    )[0]
    if runs < HALVING_FROM_ROWS:
        return None
    middle = db.fetch_one(
        "SELECT start_time FROM experiments WHERE archive_id = :archive_id AND start_time IS NOT NULL "
        "ORDER BY start_time LIMIT 1 OFFSET :offset",
        {**params, "offset": runs // 2},
    )
    return None if middle is None else middle[0]


class _PythonColumns:
    """The columns Python reads for the rows SQL left undecided, fetched by id a batch of rows at a time.

    Selected in the main query, they were computed for every row and carried
    through its sort (NULL where the verdict is known, but only after working
    the verdict out once more per column): at 100,000 runs a quarter of the
    benchmark's ``--select`` query. A batch's undecided rows are looked up in
    one query. A row removed between the two queries (a sync on another
    connection) has none, and is skipped as if it had been gone already.
    """

    def __init__(self, index: ArchiveIndex, columns: list[str], join: str, *, verdict_at: int, id_at: int) -> None:
        """``columns`` (over ``e`` and the ``join``) for the rows whose ``verdict_at`` is NULL, by their ``id_at``."""
        self.db = index.db
        self.sql = f"SELECT e.id, {', '.join(columns)} FROM experiments e{join} WHERE e.id IN "
        self.verdict_at, self.id_at = verdict_at, id_at
        self.by_id: dict[int, Row] = {}

    def look_up(self, batch: list[Row]) -> None:
        """Fetch the columns of the batch's undecided rows, for :meth:`of`."""
        verdict_at, id_at = self.verdict_at, self.id_at
        undecided = [values[id_at] for values in batch if values[verdict_at] is None]
        if undecided:
            # Integers the database itself gave, written into the SQL: no limit on bound parameters applies.
            ids = ", ".join(str(int(identifier)) for identifier in undecided)
            self.by_id = {values[0]: values[1:] for values in self.db.execute(f"{self.sql}({ids})")}

    def of(self, values: Row) -> Row | None:
        """The columns for an undecided row of the current batch (None: it is no longer in the index)."""
        return self.by_id.get(values[self.id_at])


#: Rows per batch (see _batches).
_BATCH_ROWS = 1000


def _batches(rows: Iterator[Row], limit: int | None) -> Iterator[list[Row]]:
    """``rows`` in lists of up to :data:`_BATCH_ROWS`, so the loop over them runs in a list, not a generator.

    A limited read starts with ``limit`` rows and doubles, so ``tail -n 5``
    looks a few undecided rows up (:class:`_PythonColumns`), not a batch's worth.
    """
    size = _BATCH_ROWS if limit is None else min(max(limit, 1), _BATCH_ROWS)
    while batch := list(itertools.islice(rows, size)):
        yield batch
        size = min(2 * size, _BATCH_ROWS)


def _derive_state(metadata: dict[str, Any], run_states: RunStates, rel_path: str, outcome: str) -> None:
    """``m['state']``: live / finished / interrupted (see :mod:`pycomex_index.liveness`); a file's own key wins.

    Judged only for the rows whose status says running; the others are finished.
    """
    if "state" not in metadata:
        metadata["state"] = run_states.state(rel_path, outcome)


#: The rows of the archive (``:archive_id``) among the experiments ``e``.
_ARCHIVE_CONDITION = "e.archive_id = :archive_id"


def experiments_table(index: ArchiveIndex) -> tuple[str, str | None]:
    """The table (as ``e``) for a query that reads all of the archive's experiments, and the condition that keeps
    the archive's rows among them (None: every row is the archive's).

    When the index holds this archive alone, SQLite is told to scan the table
    in storage order: the same rows as the archive index gives, without a
    lookup per row (a fifth to a half faster at 100,000); and as every row is
    the archive's, no row is tested for it (2% of the benchmark's --select
    query). With several archives in the index, the index keeps the others'
    rows out.
    """
    if index.db.url.startswith("sqlite") and index.db.fetch_row("SELECT COUNT(*) FROM archives")[0] == 1:
        return "experiments e NOT INDEXED", None
    return "experiments e", _ARCHIVE_CONDITION


def iter_listing(
    index: ArchiveIndex,
    selection: CompiledExpression | None = None,
    failures: EvaluationFailures | None = None,
) -> Iterator[list[Row]]:
    """``(rel_path, outcome, duration)`` of every readable experiment that ``selection`` keeps, oldest first, in batches.

    The hot path of ``list``: plain tuples, no per-row objects, handed on a
    list at a time so the caller formats them in one comprehension each.
    Without a selection it is served by one covering index (100,000 rows in
    well under 0.1 s).
    """
    if selection is not None:
        return iter_selected_values(index, _LISTING_COLUMNS, selection, include_unreadable=False, failures=failures)
    rows = index.db.execute(
        "SELECT rel_path, outcome, duration FROM experiments "
        f"WHERE archive_id = :archive_id AND outcome <> '{Outcome.ERROR.value}' ORDER BY start_time NULLS FIRST, rel_path",
        {"archive_id": index.archive_id},
    )
    return _batches(rows, None)


def unreadable_experiments(index: ArchiveIndex) -> Iterator[ExperimentRow]:
    """Experiments whose metadata could not be read, by path (pycomex lists them last)."""
    sql = (
        f"SELECT {', '.join(_ROW_COLUMNS)} FROM experiments e "
        f"WHERE e.archive_id = :archive_id AND e.outcome = '{Outcome.ERROR.value}' ORDER BY e.rel_path"
    )
    for values in index.db.execute(sql, {"archive_id": index.archive_id}):
        yield ExperimentRow.from_columns(values)


def load_metadata(index: ArchiveIndex, row: ExperimentRow) -> dict[str, Any] | None:
    """The full metadata document of one experiment, from its file (None if it cannot be read now)."""
    try:
        return read_metadata(experiment_folder(index.root, row.rel_path))
    except ValueError:
        return None


def experiment_as_json(index: ArchiveIndex, row: ExperimentRow, run_states: RunStates | None = None) -> dict[str, Any]:
    """The ``--json`` form of one experiment (list and tail); ``state`` is derived, ``status`` as on disk."""
    run_states = run_states if run_states is not None else RunStates(index)
    return {
        "path": os.path.join(index.root, row.rel_path),
        "rel_path": row.rel_path,
        "namespace": row.namespace,
        "name": row.name,
        "status": row.outcome,
        "state": run_states.state(row.rel_path, row.outcome),
        "has_error": row.has_error,
        "error_type": row.error_type,
        "start_time": row.start_time,
        "end_time": row.end_time,
        "duration": row.duration,
        "parameters": json_ready(row.parameters) if row.parameters_need_python else row.parameters,
        "asset_count": row.asset_count,
        "disk_usage": row.disk_usage,
        "metadata_error": row.read_error,
    }


#: How ``--json`` writes the floats JSON has no number for (documented in the README).
NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_ready(value: Any) -> Any:
    """``value`` with NaN and ±Infinity (anywhere inside) as the strings "NaN", "Infinity" and "-Infinity".

    Strict JSON has no such numbers; writing them as null would hide them,
    writing them bare would make the output unreadable to every JSON parser.
    Integers of any size stay integers (exact big integers are valid JSON).
    """
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else NON_FINITE_JSON[repr(value)]
    if kind is dict:
        return {key: json_ready(item) for key, item in value.items()}
    if kind is list:
        return [json_ready(item) for item in value]
    return value
