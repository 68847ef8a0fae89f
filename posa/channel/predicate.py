"""Content filters as data, compiled once into closures (sans-IO, pure).

A subscriber says which events it wants with a filter that is plain msgpack
data, so it can cross the network and run *at the channel*, before an event is
sent.  It is never code: nothing is ``eval``-ed, and a filter from the wire is
validated like any other untrusted input.

Grammar (a filter is one JSON/msgpack map)::

    {"field": PATH, "op": OP, "value": VALUE}   compare one field of the body
    {"and": [FILTER, ...]}                      all of them ([] is true)
    {"or":  [FILTER, ...]}                      any of them ([] is false)
    {"not": FILTER}                             the opposite

    PATH   "load" or "link.port": dotted keys into nested maps; or a list of
           keys ["a.b", "c"] for keys that contain dots; [] is the body itself
    OP     "==" "!=" "<" "<=" ">" ">=" "in"
    VALUE  any msgpack value; for "in", a list of the values to accept

Evaluation never raises.  A comparison is false when its field is missing,
when a step of the path is not a map, or when the values cannot be compared
(``1 < "a"``); ``not`` inverts that, so ``{"not": {"field": "x", "op": "==",
"value": 1}}`` matches a body without ``x``.  Comparisons follow Python's
rules for the decoded values (``1 == 1.0 == True``; bytes never equal str).

Strategy: ``compile_filter`` walks the data once, checking everything (shape,
operators, paths, bounded size and depth) and building one closure per node;
a field lookup on a one-key path is specialised because it is by far the
commonest.  An invalid filter raises ``InvalidFilter`` naming the offending
part and showing a valid example.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from posa.errors import Rejected

__all__ = ["Predicate", "InvalidFilter", "compile_filter", "OPS", "MAX_NODES", "MAX_DEPTH"]

Predicate = Callable[[Any], bool]
"""A compiled filter: ``filter(body) -> bool``; never raises."""

OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
OPS_ALL = (*OPS, "in")
MAX_NODES = 256        # comparisons and combinators in one filter
MAX_DEPTH = 16         # nesting of and/or/not
MAX_PATH = 16          # keys in one field path
MAX_KEY_LEN = 255      # characters in one key
MAX_IN = 1024          # values in one "in" list
MAX_VALUE_DEPTH = 8    # nesting inside one value

EXAMPLE = ('e.g. {"field": "load", "op": ">", "value": 0.8} or {"and": [{"field": '
           '"site", "op": "in", "value": ["a", "b"]}, {"not": {"field": "link.up", '
           '"op": "==", "value": true}}]}')

_MISSING = object()
_SCALARS = (type(None), bool, int, float, str, bytes)


class InvalidFilter(Rejected, ValueError):
    """A filter is not valid filter data. Raised locally when a filter is
    compiled; a channel refuses such a subscription with ``Rejected``."""


def compile_filter(spec: Any) -> Predicate:
    """Validate ``spec`` (filter data, see the module docstring) and compile it.

    Returns a function ``body -> bool`` that never raises. Raises
    ``InvalidFilter`` saying what is wrong, and where, if ``spec`` is not a
    valid filter."""
    budget = [MAX_NODES]
    return _compile(spec, "filter", 0, budget)


def _invalid(where: str, problem: str) -> InvalidFilter:
    return InvalidFilter(f"invalid {where}: {problem}; a filter is a map, {EXAMPLE}")


def _compile(spec: Any, where: str, depth: int, budget: list[int]) -> Predicate:
    if depth > MAX_DEPTH:
        raise _invalid(where, f"and/or/not nest deeper than {MAX_DEPTH}")
    budget[0] -= 1
    if budget[0] < 0:
        raise _invalid(where, f"more than {MAX_NODES} comparisons and combinators")
    if not isinstance(spec, dict):
        raise _invalid(where, f"expected a map, got {type(spec).__name__}")
    keys = set(spec)
    if keys == {"field", "op", "value"}:
        return _comparison(spec, where)
    if keys == {"and"} or keys == {"or"}:
        word = "and" if "and" in keys else "or"
        parts = spec[word]
        if not isinstance(parts, (list, tuple)):
            raise _invalid(where, f'"{word}" takes a list of filters, got '
                                  f"{type(parts).__name__}")
        subs = tuple(_compile(part, f"{where}.{word}[{i}]", depth + 1, budget)
                     for i, part in enumerate(parts))
        return _all(subs) if word == "and" else _any(subs)
    if keys == {"not"}:
        inner = _compile(spec["not"], f"{where}.not", depth + 1, budget)
        return lambda body: not inner(body)
    shown = ", ".join(sorted(repr(k) for k in keys)[:6]) or "none"
    raise _invalid(where, f"keys {shown} are not a filter: use exactly "
                          '"field"+"op"+"value", or one of "and", "or", "not"')


def _all(subs: tuple[Predicate, ...]) -> Predicate:
    if len(subs) == 2:
        first, second = subs
        return lambda body: first(body) and second(body)
    return lambda body: all(sub(body) for sub in subs)


def _any(subs: tuple[Predicate, ...]) -> Predicate:
    if len(subs) == 2:
        first, second = subs
        return lambda body: first(body) or second(body)
    return lambda body: any(sub(body) for sub in subs)


def _path(field: Any, where: str) -> tuple[str, ...]:
    if isinstance(field, str):
        keys: list[Any] = field.split(".")
        if not field or "" in keys:
            raise _invalid(where, f'field {field!r:.80} has an empty key; write '
                                  '"a.b.c" (or a list of keys, [] for the body itself)')
    elif isinstance(field, (list, tuple)):
        keys = list(field)
        if not all(isinstance(k, str) for k in keys):
            raise _invalid(where, "a field given as a list must list str keys")
    else:
        raise _invalid(where, f"field must be a str or a list of str keys, got "
                              f"{type(field).__name__}")
    if len(keys) > MAX_PATH:
        raise _invalid(where, f"field has more than {MAX_PATH} keys")
    if any(len(k) > MAX_KEY_LEN for k in keys):
        raise _invalid(where, f"a key of the field is longer than {MAX_KEY_LEN} characters")
    return tuple(keys)


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    if isinstance(value, _SCALARS):
        return
    if depth >= MAX_VALUE_DEPTH:
        raise _invalid(where, f"value nests deeper than {MAX_VALUE_DEPTH}")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_IN:
            raise _invalid(where, f"value lists more than {MAX_IN} items")
        for item in value:
            _check_value(item, where, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_IN:
            raise _invalid(where, f"value maps more than {MAX_IN} keys")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(where, "a map in a value must have str keys")
            _check_value(item, where, depth + 1)
        return
    raise _invalid(where, f"value of type {type(value).__name__} is not data; use None, "
                          "bool, int, float, str, bytes, lists or maps")


def _comparison(spec: dict[str, Any], where: str) -> Predicate:
    path = _path(spec["field"], f"{where}.field")
    op, value = spec["op"], spec["value"]
    if not isinstance(op, str) or op not in OPS_ALL:
        raise _invalid(f"{where}.op", f"{op!r:.40} is not an operator; use one of "
                                      + " ".join(OPS_ALL))
    _check_value(value, f"{where}.value")
    if op == "in":
        if not isinstance(value, (list, tuple)):
            raise _invalid(f"{where}.value", '"in" takes a list of the values to '
                                             f"accept, got {type(value).__name__}")
        test = _membership(value)
    else:
        compare = OPS[op]
        if isinstance(value, tuple):
            value = list(value)  # decoded bodies hold lists, never tuples

        def test(found: Any) -> bool:
            try:
                return compare(found, value) is True
            except (TypeError, RecursionError):
                return False
    return _lookup(path, test)


def _membership(values: list[Any] | tuple[Any, ...]) -> Callable[[Any], bool]:
    items = [list(v) if isinstance(v, tuple) else v for v in values]
    try:
        accepted = frozenset(items)
    except TypeError:  # lists or maps among the values: compare one by one
        def scan(found: Any) -> bool:
            try:
                return found in items
            except RecursionError:
                return False
        return scan

    def member(found: Any) -> bool:
        try:
            return found in accepted
        except TypeError:  # an unhashable found value equals no hashable item
            return False
    return member


def _lookup(path: tuple[str, ...], test: Callable[[Any], bool]) -> Predicate:
    if not path:
        return test
    if len(path) == 1:
        key = path[0]

        def one(body: Any) -> bool:
            if not isinstance(body, dict):
                return False
            found = body.get(key, _MISSING)
            return found is not _MISSING and test(found)
        return one

    def walk(body: Any) -> bool:
        for key in path:
            if not isinstance(body, dict):
                return False
            body = body.get(key, _MISSING)
            if body is _MISSING:
                return False
        return test(body)
    return walk
