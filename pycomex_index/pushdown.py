"""Turning parts of a ``--select`` expression into SQL that decides, per experiment, what Python would find.

The SQL made here is a *verdict* per experiment: 1 where Python would find
the expression true without raising, 0 where false without raising, NULL
where SQL cannot tell. The index drops the rows whose verdict is 0, keeps the
rows whose verdict is 1 without evaluating anything in Python, and evaluates
the Python expression on the NULL rows only; so both the selected
experiments and the count of experiments on which the expression raised are
exactly those of pure Python evaluation. Anything that cannot be translated
with that guarantee is NULL, left to Python.

Translated, on either side of ``==, <, <=, >, >=`` with a constant:

- ``m['status']``, ``m['error_type']`` (string constants, ``==`` only),
- ``m['start_time']``, ``m['end_time']``, ``m['duration']`` (numbers; start and
  end times also against ISO date strings),
- ``p['NAME']`` (numbers or strings, from the typed values of
  ``experiment_parameters``, one join per parameter named; SQLite's rows are
  written by the library, PostgreSQL's by the triggers of migration 0012, and a
  database with no rows there merely decides nothing about parameters),

combined with ``and`` / ``or``. Number columns hold a value only when the
file's value is a finite number of plausible size, text columns only when it
is a string SQLite can store; a row whose column is NULL is left to Python,
and so is a row whose documents are in Python's JSON dialect (NaN, Infinity,
big integers), which has no typed parameter values.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from pycomex_index.discovery import EXACT_FLOAT_INTEGER
from pycomex_index.selection import METADATA_NAMES, PARAMETER_NAMES, CompiledExpression

_TEXT_COLUMNS = {"status": "e.status", "error_type": "e.error_type"}
_NUMBER_COLUMNS = {"start_time": "e.start_time", "end_time": "e.end_time", "duration": "e.duration"}
_DATE_COMPARABLE = {"start_time", "end_time"}
_MIRRORED = {ast.Eq: ast.Eq, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
#: Floats read back from JSON by SQLite may differ from Python's by an ulp: compare with this much slack.
_RELATIVE_SLACK = 1e-9


@dataclass
class Prefilter:
    """SQL (over ``e`` = experiments and the ``joins``) that decides the expression where it can.

    ``verdict`` is 1 (Python finds the expression true without raising), 0
    (false without raising) or NULL (undecided: evaluate in Python);
    ``condition`` keeps the rows whose verdict is not 0. ``joins`` are LEFT
    JOINs the query must add (one typed parameter each, at most one row per
    experiment, so they never multiply rows).
    """

    verdict: str
    params: dict[str, Any]
    pushed: list[str] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    #: The verdict with every parameter left undecided: 0 only where the verdict is 0, and over ``e`` alone,
    #: so SQLite tests it before it looks a row's parameters up (None when it is never 0, or needs no join).
    experiment_verdict: str | None = None

    @property
    def condition(self) -> str:
        verdict = f"COALESCE({self.verdict}, 1) = 1"
        if self.experiment_verdict is None:
            return verdict
        return f"COALESCE({self.experiment_verdict}, 1) = 1 AND {verdict}"


def prefilter_for(expression: CompiledExpression) -> Prefilter | None:
    """The SQL verdict for ``expression``, or None when it can never drop a row."""
    if not isinstance(expression.tree, ast.Expression):
        return None
    if any(isinstance(node, ast.NamedExpr) for node in ast.walk(expression.tree)):
        return None  # ``m`` or ``p`` could be rebound mid-expression: leave it all to Python
    translator = _Translator()
    verdict = translator.verdict(expression.tree.body)
    if not verdict.can_be_false:
        return None
    prefilter = Prefilter(verdict.sql, translator.params, translator.pushed, list(translator.joins.values()))
    if translator.joins:
        # Leaving out a part can only turn a 0 into NULL (see _and and _or), never into a 1.
        without_parameters = _Translator(reads_parameters=False, params=dict(prefilter.params))
        experiment_verdict = without_parameters.verdict(expression.tree.body)
        if experiment_verdict.can_be_false:
            prefilter.experiment_verdict, prefilter.params = experiment_verdict.sql, without_parameters.params
    return prefilter


class _Verdict(NamedTuple):
    """SQL giving 1 / 0 / NULL for one part of the expression (see :class:`Prefilter`).

    ``can_be_false`` is False when the SQL is never 0, so it cannot drop a row.
    Python evaluates ``a and b`` from the left and stops at the first part
    that is false or raises, so ``a and b`` is b's verdict where a's is 1, 0
    where a's is 0, and undecided where a's is; ``or`` likewise.

    The SQL is a CASE kept as its ``(test, result)`` branches (no ELSE: NULL
    where no test holds), so ``and``/``or`` put the rest into the first part's
    branches instead of wrapping a CASE around it: SQLite then tests each row
    once per comparison, not once more per level.
    """

    branches: tuple[tuple[str, str], ...]
    can_be_false: bool = True

    @property
    def sql(self) -> str:
        if not self.branches:
            return "NULL"
        return "CASE" + "".join(f" WHEN {test} THEN {result}" for test, result in self.branches) + " END"


_UNDECIDED = _Verdict((), can_be_false=False)


class _Translator:
    def __init__(self, *, reads_parameters: bool = True, params: dict[str, Any] | None = None) -> None:
        #: False: every comparison of a parameter is left undecided (no join).
        self.reads_parameters = reads_parameters
        self.params: dict[str, Any] = params if params is not None else {}
        self.pushed: list[str] = []
        #: parameter name -> its LEFT JOIN of experiment_parameters (alias in ``aliases``)
        self.joins: dict[str, str] = {}
        self.aliases: dict[str, str] = {}

    def verdict(self, node: ast.AST) -> _Verdict:
        if isinstance(node, ast.BoolOp):
            parts = [self.verdict(value) for value in node.values]
            # Fold from the right: a and b and c is a and (b and c), which Python evaluates the same way.
            result = parts[-1]
            for part in reversed(parts[:-1]):
                result = _and(part, result) if isinstance(node.op, ast.And) else _or(part, result)
            return result
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return self._comparison(node)
        return _UNDECIDED

    def _comparison(self, node: ast.Compare) -> _Verdict:
        operator_type = type(node.ops[0])
        if operator_type not in _MIRRORED:
            return _UNDECIDED
        left, right = node.left, node.comparators[0]
        if isinstance(left, ast.Constant) and not isinstance(right, ast.Constant):
            left, right, operator_type = right, left, _MIRRORED[operator_type]
        if not isinstance(right, ast.Constant) or isinstance(right.value, bool):
            return _UNDECIDED
        subject = _subscript_of(left)
        if subject is None:
            return _UNDECIDED
        variable, key = subject
        if variable in METADATA_NAMES:
            verdict = self._metadata_verdict(key, operator_type, right.value)
        elif self.reads_parameters:
            verdict = self._parameter_verdict(key, operator_type, right.value)
        else:
            return _UNDECIDED
        if verdict is not _UNDECIDED:
            self.pushed.append(ast.unparse(node))
        return verdict

    def _bind(self, value: Any) -> str:
        name = f"pushdown_{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def _metadata_verdict(self, key: str, operator_type: type, constant: Any) -> _Verdict:
        if key in _TEXT_COLUMNS and operator_type is ast.Eq and isinstance(constant, str):
            # The column holds the value whenever it is a string, the only kind that can equal one;
            # NULL (missing, which raises, or another kind) is left to Python.
            column, value = _TEXT_COLUMNS[key], self._bind(constant)
            return _Verdict(((f"{column} = {value}", "1"), (f"{column} IS NOT NULL", "0")))
        if key not in _NUMBER_COLUMNS:
            return _UNDECIDED
        if isinstance(constant, str) and key in _DATE_COMPARABLE:
            try:
                constant = datetime.fromisoformat(constant.strip()).timestamp()
            except ValueError:
                return _UNDECIDED
        if not isinstance(constant, (int, float)):
            return _UNDECIDED
        column = _NUMBER_COLUMNS[key]
        true_test, false_test = self._number_tests(column, operator_type, float(constant))
        # NULL: the file's value is no number (Python may compare, or raise); huge: the float column is inexact.
        inexact = f"ABS({column}) >= {float(EXACT_FLOAT_INTEGER)!r}"
        return _Verdict(((inexact, "NULL"), *_when(true_test, false_test)))

    def _parameter_verdict(self, name: str, operator_type: type, constant: Any) -> _Verdict:
        if isinstance(constant, str):
            if operator_type is not ast.Eq:
                return _UNDECIDED
        elif not isinstance(constant, (int, float)) or abs(constant) >= EXACT_FLOAT_INTEGER:
            return _UNDECIDED
        # Numbers and booleans (1/0: Python compares bools as 0/1) are in ``number``, strings in ``text``.
        # No row (missing: KeyError in Python; null, list, dict; an integer a float cannot hold; a document in
        # Python's dialect) leaves both NULL, and the comparison to Python.
        number, text = self._typed_parameter(name)
        if isinstance(constant, str):
            value = self._bind(constant)
            return _Verdict(((f"{text} = {value}", "1"), (f"{text} IS NOT NULL OR {number} IS NOT NULL", "0")))
        true_test, false_test = self._number_tests(number, operator_type, float(constant))
        if operator_type is ast.Eq:
            # A string is merely unequal to a number; on < and > Python raises, so a string stays undecided.
            false_test = f"({false_test} OR {text} IS NOT NULL)"
        return _Verdict(_when(true_test, false_test))

    def _typed_parameter(self, name: str) -> tuple[str, str]:
        """The number and text columns of parameter ``name``, joined once however often the expression reads it."""
        alias = self.aliases.get(name)
        if alias is None:
            alias = self.aliases[name] = f"pv{len(self.aliases)}"
            self.joins[name] = (
                f"LEFT JOIN experiment_parameters {alias} ON {alias}.experiment_id = e.id AND {alias}.name_id = "
                f"(SELECT id FROM parameter_names WHERE name = {self._bind(name)})"
            )
        return f"{alias}.number", f"{alias}.text"

    def _number_tests(self, column: str, operator_type: type, constant: float) -> tuple[str | None, str]:
        """Tests that ``column op constant`` is certainly true (None: never certain) and certainly false.

        Each allows a hair of slack, so neither is fooled by a float that SQLite read back an ulp away.
        """
        slack = abs(constant) * _RELATIVE_SLACK + 1e-300
        low, high = self._bind(constant - slack), self._bind(constant + slack)
        if operator_type is ast.Eq:
            return None, f"NOT ({column} BETWEEN {low} AND {high})"
        if operator_type in (ast.Lt, ast.LtE):
            return f"{column} < {low}", f"{column} > {high}"
        return f"{column} > {high}", f"{column} < {low}"


def _when(true_test: str | None, false_test: str) -> tuple[tuple[str, str], ...]:
    """The branches of a verdict: 1 where ``true_test`` holds, 0 where ``false_test`` does."""
    return (((true_test, "1"),) if true_test else ()) + ((false_test, "0"),)


def _and(first: _Verdict, rest: _Verdict) -> _Verdict:
    if first is _UNDECIDED:
        return _UNDECIDED  # Python may raise on the first part before it reaches the rest
    return _Verdict(_then(first, when_true=rest.sql, when_false="0"), first.can_be_false or rest.can_be_false)


def _or(first: _Verdict, rest: _Verdict) -> _Verdict:
    if first is _UNDECIDED:
        return _UNDECIDED
    return _Verdict(_then(first, when_true="1", when_false=rest.sql), first.can_be_false and rest.can_be_false)


def _then(first: _Verdict, *, when_true: str, when_false: str) -> tuple[tuple[str, str], ...]:
    """``CASE <first> WHEN 1 THEN when_true WHEN 0 THEN when_false END``, as ``first``'s own branches.

    A branch giving 1 gives ``when_true`` instead, one giving 0 ``when_false``,
    one giving NULL still NULL; a branch giving a verdict of its own (a part
    that was an ``and``/``or`` itself) has it mapped by a CASE of its own.
    """
    mapped = {"1": when_true, "0": when_false, "NULL": "NULL"}
    return tuple(
        (test, mapped.get(result) or f"CASE {result} WHEN 1 THEN {when_true} WHEN 0 THEN {when_false} END")
        for test, result in first.branches
    )


def _subscript_of(node: ast.AST) -> tuple[str, str] | None:
    """``('m', 'status')`` for ``m['status']``; None for anything else."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id in METADATA_NAMES | PARAMETER_NAMES
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.value.id, node.slice.value
    return None
