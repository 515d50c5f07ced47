"""Turning parts of a ``--select`` expression into a SQL pre-filter that can only drop rows Python would drop.

The SQL condition made here drops only experiments on which the Python
expression is false *without raising*. The index uses it to skip them, then
still evaluates the Python expression on every row that is left, so both the
selected experiments and the count of experiments on which the expression
raised are exactly those of pure Python evaluation; the pre-filter only saves
work. Anything that cannot be translated with that guarantee is left to
Python.

Translated, on either side of ``==, <, <=, >, >=`` with a constant:

- ``m['status']``, ``m['error_type']`` (string constants, ``==`` only),
- ``m['start_time']``, ``m['end_time']``, ``m['duration']`` (numbers; start and
  end times also against ISO date strings),
- ``p['NAME']`` (numbers or strings; SQLite only, through its JSON functions),

combined with ``and`` / ``or``. Number columns hold a value only when the
file's value is a number; a row whose column is NULL is kept for Python.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pycomex_index.selection import METADATA_NAMES, PARAMETER_NAMES, CompiledExpression

_TEXT_COLUMNS = {"status": "e.status", "error_type": "e.error_type"}
_NUMBER_COLUMNS = {"start_time": "e.start_time", "end_time": "e.end_time", "duration": "e.duration"}
_DATE_COMPARABLE = {"start_time", "end_time"}
_SQL_OPERATORS = {ast.Eq: "=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_MIRRORED = {ast.Eq: ast.Eq, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
#: Floats read back from JSON by SQLite may differ from Python's by an ulp: compare with this much slack.
_RELATIVE_SLACK = 1e-9
#: Beyond this a float column cannot hold an integer exactly; such rows are left to Python.
_EXACT_FLOAT_LIMIT = 2.0**53


@dataclass
class Prefilter:
    """A SQL condition (over ``e`` = experiments, ``f`` = experiment_fields) and its parameters."""

    condition: str
    params: dict[str, Any]
    pushed: list[str] = field(default_factory=list)
    uses_fields: bool = False


def prefilter_for(expression: CompiledExpression, *, sqlite: bool) -> Prefilter | None:
    """The SQL pre-filter for ``expression``, or None when nothing in it can be pushed down."""
    if not isinstance(expression.tree, ast.Expression):
        return None
    if any(isinstance(node, ast.NamedExpr) for node in ast.walk(expression.tree)):
        return None  # ``m`` or ``p`` could be rebound mid-expression: leave it all to Python
    translator = _Translator(sqlite=sqlite)
    body = expression.tree.body
    condition = translator.translate(body)
    if condition is None:
        return None
    return Prefilter(condition, translator.params, translator.pushed, translator.uses_fields)


@dataclass
class _Condition:
    """Two SQL conditions about one part of the expression, per experiment.

    ``keep`` is false only where Python would find the part false *without
    raising*; ``certain`` is true only where Python would find it true without
    raising. Neither is ever NULL. With both, ``a and b`` can be pruned
    exactly: Python only reaches ``b`` where ``a`` was true, so a row may be
    dropped for ``b`` only where ``a`` is certainly true. That keeps both the
    selected experiments and the count of experiments on which the expression
    raised exactly as pure Python evaluation has them.
    """

    keep: str
    certain: str


_ALWAYS = "1 = 1"
_UNKNOWN = _Condition(keep=_ALWAYS, certain="1 = 0")


class _Translator:
    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        self.params: dict[str, Any] = {}
        self.pushed: list[str] = []
        self.uses_fields = False

    def translate(self, node: ast.AST) -> str | None:
        """A SQL condition that only drops rows on which Python finds ``node`` false without raising."""
        keep = self._condition(node).keep
        return None if keep == _ALWAYS else keep

    def _condition(self, node: ast.AST) -> _Condition:
        if isinstance(node, ast.BoolOp):
            parts = [self._condition(value) for value in node.values]
            if all(part is _UNKNOWN for part in parts):
                return _UNKNOWN
            if isinstance(node.op, ast.And):
                return self._conjunction(parts)
            return self._disjunction(parts)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return self._comparison(node)
        return _UNKNOWN

    @staticmethod
    def _conjunction(parts: list[_Condition]) -> _Condition:
        # keep(a and b) = keep(a) and (not certain(a) or keep(b)); certain(a and b) = certain(a) and certain(b)
        keep, certain = parts[-1].keep, parts[-1].certain
        for part in reversed(parts[:-1]):
            keep = f"({part.keep}) AND (NOT ({part.certain}) OR ({keep}))"
            certain = f"({part.certain}) AND ({certain})"
        return _Condition(keep, certain)

    @staticmethod
    def _disjunction(parts: list[_Condition]) -> _Condition:
        # Python reaches a later part only where every earlier one was false without raising
        # (NOT keep), so only there does the later part's certainty count.
        keep = _ALWAYS if _UNKNOWN in parts else " OR ".join(f"({part.keep})" for part in parts)
        certain = parts[0].certain
        earlier_keeps = [parts[0].keep]
        for part in parts[1:]:
            certain = f"({certain}) OR (NOT ({' OR '.join(earlier_keeps)}) AND ({part.certain}))"
            earlier_keeps.append(f"({part.keep})")
        return _Condition(keep, certain)

    def _comparison(self, node: ast.Compare) -> _Condition:
        operator_type = type(node.ops[0])
        if operator_type not in _SQL_OPERATORS:
            return _UNKNOWN
        left, right = node.left, node.comparators[0]
        if isinstance(left, ast.Constant) and not isinstance(right, ast.Constant):
            left, right, operator_type = right, left, _MIRRORED[operator_type]
        if not isinstance(right, ast.Constant) or isinstance(right.value, bool):
            return _UNKNOWN
        subject = _subscript_of(left)
        if subject is None:
            return _UNKNOWN
        variable, key = subject
        if variable in METADATA_NAMES:
            condition = self._metadata_condition(key, operator_type, right.value)
        else:
            condition = self._parameter_condition(key, operator_type, right.value)
        if condition is not _UNKNOWN:
            self.pushed.append(ast.unparse(node))
        return condition

    def _bind(self, value: Any) -> str:
        name = f"pushdown_{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def _metadata_condition(self, key: str, operator_type: type, constant: Any) -> _Condition:
        if key in _TEXT_COLUMNS and operator_type is ast.Eq and isinstance(constant, str):
            # The column holds the value whenever it is a string, the only kind that can equal one;
            # NULL (missing, which raises, or another kind) is kept for Python.
            column, value = _TEXT_COLUMNS[key], self._bind(constant)
            return _Condition(keep=f"{column} IS NULL OR {column} = {value}", certain=f"COALESCE({column} = {value}, 0) = 1")
        if key not in _NUMBER_COLUMNS:
            return _UNKNOWN
        if isinstance(constant, str) and key in _DATE_COMPARABLE:
            try:
                constant = datetime.fromisoformat(constant.strip()).timestamp()
            except ValueError:
                return _UNKNOWN
        if not isinstance(constant, (int, float)):
            return _UNKNOWN
        column = _NUMBER_COLUMNS[key]
        # NULL: the file's value is no number (Python may compare, or raise); huge: the float column is inexact.
        exact = f"{column} IS NOT NULL AND ABS({column}) < {_EXACT_FLOAT_LIMIT!r}"
        wider, narrower = self._number_tests(column, operator_type, float(constant))
        return _Condition(keep=f"NOT ({exact}) OR {wider}", certain=f"{exact} AND {narrower}")

    def _parameter_condition(self, name: str, operator_type: type, constant: Any) -> _Condition:
        if not self.sqlite:
            return _UNKNOWN
        self.uses_fields = True
        # json_extract gives NULL for a missing parameter (KeyError in Python) and for null, 1/0 for
        # true/false (Python compares bools as 0/1), numbers as numbers, strings and lists as text.
        # Each JSON function call parses the document again, so the conditions use as few as they can.
        path = self._bind('$."' + name.replace('"', '""') + '"')
        value = f"json_extract(f.parameters_json, {path})"
        is_number = f"typeof({value}) IN ('integer', 'real')"
        if isinstance(constant, str):
            if operator_type is not ast.Eq:
                return _UNKNOWN
            text = self._bind(constant)
            return _Condition(
                keep=f"COALESCE({value} = {text}, 1) = 1",
                certain=f"json_type(f.parameters_json, {path}) = 'text' AND {value} = {text}",
            )
        if not isinstance(constant, (int, float)) or abs(constant) >= _EXACT_FLOAT_LIMIT:
            return _UNKNOWN
        wider, narrower = self._number_tests(value, operator_type, float(constant))
        # Anything but a number raises on < and > (keep it for Python), and is merely unequal on ==.
        otherwise = f"{value} IS NULL" if operator_type is ast.Eq else "1"
        return _Condition(
            keep=f"CASE WHEN {is_number} THEN {wider} ELSE {otherwise} END",
            certain=f"CASE WHEN {is_number} THEN {narrower} ELSE 0 END",
        )

    def _number_tests(self, column: str, operator_type: type, constant: float) -> tuple[str, str]:
        """``column op constant`` widened by a hair (never drops a true row) and narrowed (never keeps a false one)."""
        slack = abs(constant) * _RELATIVE_SLACK + 1e-300
        low_wide, high_wide = self._bind(constant - slack), self._bind(constant + slack)
        if operator_type is ast.Eq:
            return f"{column} BETWEEN {low_wide} AND {high_wide}", "1 = 0"
        if operator_type in (ast.Lt, ast.LtE):
            return f"{column} <= {high_wide}", f"{column} < {low_wide}"
        return f"{column} >= {low_wide}", f"{column} > {high_wide}"


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
