"""``--select`` and ``--group`` expressions: compiled once, checked before anything runs, evaluated per experiment.

The variables are pycomex's: ``m``/``metadata``/``meta`` is the experiment's
metadata dict, ``p``/``parameters``/``params`` its parameter values. Two keys
are derived when the file lacks them: ``m['path']`` (the absolute folder) and
``m['name']`` (the namespace). ``m['start_time']`` and ``m['end_time']`` also
compare with ISO date strings (``m['start_time'] > '2024-01-10'``).

The expression is analysed once to learn how much of each experiment it
reads, so the index only parses the small summary or parameter columns for
most expressions and the full document only when the expression needs it.
"""

from __future__ import annotations

import ast
import builtins
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pycomex_index.discovery import DOCUMENT_ONLY_KEYS, EXACT_FLOAT_INTEGER
from pycomex_index.errors import SelectionError

METADATA_NAMES = frozenset({"m", "metadata", "meta"})
PARAMETER_NAMES = frozenset({"p", "parameters", "params"})
CONTEXT_NAMES = METADATA_NAMES | PARAMETER_NAMES
TIME_KEYS = ("start_time", "end_time")


#: How much of an experiment's metadata an expression reads, from least to most.
READS_NO_METADATA, READS_SUMMARY, READS_DOCUMENT = range(3)


class PosixTime(float):
    """A POSIX timestamp that also compares with ISO date strings, read as local time like pycomex's clock."""

    __slots__ = ()

    def _other_as_seconds(self, other: Any) -> Any:
        if isinstance(other, str):
            try:
                return datetime.fromisoformat(other.strip()).timestamp()
            except ValueError:
                raise TypeError(f"cannot compare a time with {other!r}: not an ISO date") from None
        return other

    def __lt__(self, other: Any) -> Any:
        return float.__lt__(self, self._other_as_seconds(other))

    def __le__(self, other: Any) -> Any:
        return float.__le__(self, self._other_as_seconds(other))

    def __gt__(self, other: Any) -> Any:
        return float.__gt__(self, self._other_as_seconds(other))

    def __ge__(self, other: Any) -> Any:
        return float.__ge__(self, self._other_as_seconds(other))

    __hash__ = float.__hash__


@dataclass
class CompiledExpression:
    """A checked, compiled expression (or, for modify, statements) and what it reads."""

    source: str
    code: Any
    tree: ast.AST
    reads_metadata: int  # READS_*
    reads_parameters: bool
    #: The keys ``m`` is read with (``m['key']``, ``m.get('key')``, ``'key' in m``) when those are all it is
    #: read with (READS_SUMMARY or READS_NO_METADATA); None when it may be read whole (READS_DOCUMENT).
    metadata_keys: frozenset[str] | None = frozenset()

    def may_read_metadata_key(self, key: str) -> bool:
        """Whether the expression can see ``m[key]``: the derived keys costly to make are made only then."""
        return self.metadata_keys is None or key in self.metadata_keys


@dataclass
class EvaluationFailures:
    """Experiments on which an expression raised (counted by error, reported in one line), and how many it ran on.

    ``evaluated`` counts the experiments Python evaluated; ``selected_in_sql``
    those SQL found it true on for certain, which Python did not evaluate again.
    """

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    evaluated: int = 0
    selected_in_sql: int = 0
    pushed_down: list[str] = field(default_factory=list)
    sql_condition: str | None = None

    def record(self, error: BaseException) -> None:
        self.count += 1
        self.reasons[f"{type(error).__name__}: {error}"] += 1

    def summary(self, limit: int = 3) -> str:
        parts = [f"{reason} ×{count}" for reason, count in self.reasons.most_common(limit)]
        if len(self.reasons) > limit:
            parts.append(f"{len(self.reasons) - limit} other errors")
        return "; ".join(parts)


def compile_expression(source: str, *, mode: str = "eval", what: str = "--select") -> CompiledExpression:
    """Compile ``source`` and reject syntax errors and unknown names before any experiment is read.

    ``mode`` is ``"eval"`` (an expression) or ``"exec"`` (statements, for modify).
    """
    if mode not in ("eval", "exec"):
        raise ValueError(f"mode must be 'eval' or 'exec', not {mode!r}")
    text = source.strip() if mode == "eval" else _dedent_code(source)
    if not text:
        raise SelectionError(f"{what} is empty")
    tree: ast.Expression | ast.Module
    try:
        tree = ast.parse(text, mode="eval") if mode == "eval" else ast.parse(text, mode="exec")
    except SyntaxError as error:
        detail = error.msg + (f" (line {error.lineno})" if mode == "exec" and error.lineno else "")
        # "Syntax error in" is pycomex's wording: scripts written around pycomex look for it.
        raise SelectionError(f"Syntax error in {what}: {detail}: {source.strip()!r}") from None
    unknown = sorted(_unknown_names(tree))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise SelectionError(
            f"{what} uses unknown name {names}: use m/metadata/meta (metadata) or p/parameters/params (parameters)"
        )
    code = compile(tree, f"<{what}>", mode)
    reads_metadata, reads_parameters, metadata_keys = _what_it_reads(tree)
    return CompiledExpression(
        source=source,
        code=code,
        tree=tree,
        reads_metadata=reads_metadata,
        reads_parameters=reads_parameters,
        metadata_keys=metadata_keys,
    )


def _dedent_code(source: str) -> str:
    import textwrap

    return textwrap.dedent(source).strip("\n")


def _unknown_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set(CONTEXT_NAMES) | set(dir(builtins))
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loaded.add(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def _what_it_reads(tree: ast.AST) -> tuple[int, bool, frozenset[str] | None]:
    """How much of ``m`` the expression reads (READS_*: summary keys or the whole document), whether it uses
    ``p``, and the keys it reads ``m`` with (None: it may read any)."""
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    reads_metadata, reads_parameters = READS_NO_METADATA, False
    keys: set[str] | None = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name):
            continue
        if node.id in _NAMESPACE_READERS:
            keys, reads_metadata, reads_parameters = None, READS_DOCUMENT, True
            continue
        if node.id in PARAMETER_NAMES:
            reads_parameters = True
        elif node.id in METADATA_NAMES and keys is not None:
            key = _constant_key_read(node, parents)
            if isinstance(node.ctx, ast.Load) and key is not None:
                keys.add(key)
                if key not in DOCUMENT_ONLY_KEYS:
                    reads_metadata = max(reads_metadata, READS_SUMMARY)
                    continue
            if not isinstance(node.ctx, ast.Load) or key is None:
                keys = None  # m used otherwise (passed on, iterated, rebound): any key may be read
            reads_metadata = READS_DOCUMENT
    return reads_metadata, reads_parameters, (frozenset(keys) if keys is not None else None)


#: Builtins through which an expression can reach ``m`` and ``p`` without naming them (``eval("m['state']")``):
#: such an expression gets both, whole.
_NAMESPACE_READERS = frozenset({"eval", "exec", "globals", "locals", "vars", "compile"})


def _constant_key_read(node: ast.Name, parents: dict[ast.AST, ast.AST]) -> str | None:
    """The key of ``m['key']``, ``m.get('key', ...)`` or ``'key' in m``; None for any other use of ``m``."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and parent.value is node and isinstance(parent.ctx, ast.Load):
        if isinstance(parent.slice, ast.Constant) and isinstance(parent.slice.value, str):
            return parent.slice.value
        return None
    if (
        isinstance(parent, ast.Compare)
        and len(parent.ops) == 1
        and isinstance(parent.ops[0], (ast.In, ast.NotIn))
        and parent.comparators[0] is node
        and isinstance(parent.left, ast.Constant)
        and isinstance(parent.left.value, str)
    ):
        return parent.left.value  # 'key' in m: the summary has the same keys as the file, but for the big ones
    if isinstance(parent, ast.Attribute) and parent.attr == "get" and parent.value is node:
        call = parents.get(parent)
        if (
            isinstance(call, ast.Call)
            and call.func is parent
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, str)
        ):
            return call.args[0].value
    return None


#: The keys :func:`build_metadata` adds or changes: an expression that reads none of them sees the file's dict as is.
BUILT_KEYS = ("path", "name", *TIME_KEYS)


def build_metadata(metadata: dict[str, Any], *, path: str, namespace: str) -> dict[str, Any]:
    """``m`` as expressions see it: the file's dict plus derived ``path``/``name`` and date-aware times."""
    metadata.setdefault("path", path)
    metadata.setdefault("name", namespace)
    for key in TIME_KEYS:
        value = metadata.get(key)
        # An integer a float cannot hold exactly stays an integer, so it still compares as pycomex's would.
        if isinstance(value, float) or (type(value) is int and -EXACT_FLOAT_INTEGER <= value <= EXACT_FLOAT_INTEGER):
            metadata[key] = PosixTime(value)
    return metadata


def evaluation_globals(metadata: dict[str, Any] | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The namespace an expression runs in (globals, so comprehensions see ``m`` and ``p`` too)."""
    namespace: dict[str, Any] = {"__builtins__": builtins}
    for name in METADATA_NAMES:
        namespace[name] = metadata
    for name in PARAMETER_NAMES:
        namespace[name] = parameters
    return namespace


_NAMESPACE_SIZE = 1 + len(CONTEXT_NAMES)


def rebind_evaluation_globals(
    namespace: dict[str, Any], metadata: dict[str, Any] | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """``namespace`` (an :func:`evaluation_globals`) for the next experiment: equal to a fresh one, often the same dict.

    Reusing one dict spares building one per experiment. Nothing an expression
    did to it reaches the next experiment: the builtins and the six names are
    set again, and a dict holding any other name (bound with ``:=``, or put in
    through ``globals()``) is replaced by a fresh one.
    """
    # The names spelled out, not looped over: this runs per experiment (a test checks they are the six).
    namespace["__builtins__"] = builtins
    namespace["m"] = namespace["metadata"] = namespace["meta"] = metadata
    namespace["p"] = namespace["parameters"] = namespace["params"] = parameters
    if len(namespace) != _NAMESPACE_SIZE:
        return evaluation_globals(metadata, parameters)
    return namespace


class ExpressionExit(Exception):
    """User code called ``exit()``/``sys.exit()``: a failed evaluation, never the command's own exit."""

    def __init__(self, code: object) -> None:
        super().__init__(f"the expression called exit({code!r})")


def evaluate(expression: CompiledExpression, namespace: dict[str, Any]) -> Any:
    """Run the compiled expression; exceptions propagate so the caller can count them.

    ``SystemExit`` is not an ``Exception``: left alone, ``--select "exit(3)"``
    would end the whole command silently with status 3.
    """
    try:
        return eval(expression.code, namespace)
    except SystemExit as error:
        raise ExpressionExit(error.code) from None
