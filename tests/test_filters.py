"""Content filters as data: a table of (filter, body, match), the errors, properties."""
from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.channel.predicate import MAX_DEPTH, MAX_NODES, OPS, InvalidFilter, compile_filter
from posa.errors import Rejected

BODY = {"load": 0.9, "site": "a", "link": {"port": 3, "up": False, "name": "eth0"},
        "tags": ["core", "edge"], "a.b": 1, "n": None, "raw": b"\x00\x01"}


def cmp(field: Any, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


MATCHES = [
    (cmp("load", ">", 0.8), BODY, True),
    (cmp("load", ">", 0.95), BODY, False),
    (cmp("load", ">=", 0.9), BODY, True),
    (cmp("load", "<", 1), BODY, True),
    (cmp("load", "<=", 0.5), BODY, False),
    (cmp("site", "==", "a"), BODY, True),
    (cmp("site", "!=", "a"), BODY, False),
    (cmp("site", "in", ["a", "b"]), BODY, True),
    (cmp("site", "in", ["c"]), BODY, False),
    (cmp("link.port", "==", 3), BODY, True),
    (cmp("link.up", "==", False), BODY, True),
    (cmp(["a.b"], "==", 1), BODY, True),                      # a key with a dot
    (cmp("a.b", "==", 1), BODY, False),                       # ... is not a path
    (cmp("tags", "==", ["core", "edge"]), BODY, True),
    (cmp("tags", "in", [["core", "edge"], ["x"]]), BODY, True),   # unhashable values
    (cmp("n", "==", None), BODY, True),
    (cmp("raw", "==", b"\x00\x01"), BODY, True),
    (cmp("raw", "==", "\x00\x01"), BODY, False),              # bytes never equal str
    (cmp("link.port", "==", 3.0), BODY, True),                # Python's numbers
    (cmp([], "==", 5), 5, True),                               # the body itself
    (cmp([], ">", 4), 5, True),
    # missing fields and incomparable values: no match, never an error
    (cmp("missing", "==", 1), BODY, False),
    (cmp("link.missing.deeper", "==", 1), BODY, False),
    (cmp("site.inner", "==", 1), BODY, False),                # "a" is not a map
    (cmp("load", "<", "high"), BODY, False),
    (cmp("link", ">", 1), BODY, False),
    (cmp("tags", "in", ["core"]), BODY, False),               # list value vs hashables
    (cmp("load", ">", 0), None, False),
    (cmp("load", ">", 0), [1, 2], False),
    (cmp("load", "==", 0.9), {"load": math.nan}, False),
    # combinators
    ({"and": [cmp("load", ">", 0.8), cmp("site", "==", "a")]}, BODY, True),
    ({"and": [cmp("load", ">", 0.8), cmp("site", "==", "b")]}, BODY, False),
    ({"and": [cmp("load", ">", 0.8), cmp("site", "==", "a"), cmp("n", "==", None)]},
     BODY, True),
    ({"or": [cmp("load", ">", 5), cmp("site", "==", "a")]}, BODY, True),
    ({"or": [cmp("load", ">", 5), cmp("site", "==", "b"), cmp("n", "!=", None)]},
     BODY, False),
    ({"not": cmp("site", "==", "a")}, BODY, False),
    ({"not": cmp("missing", "==", 1)}, BODY, True),           # not inverts a miss
    ({"and": []}, BODY, True),
    ({"or": []}, BODY, False),
]


@pytest.mark.parametrize("spec, body, expected", MATCHES)
def test_filter_table(spec: Any, body: Any, expected: bool) -> None:
    assert compile_filter(spec)(body) is expected


INVALID = [
    (None, "expected a map"),
    ("load > 0.8", "expected a map"),
    ({}, "are not a filter"),
    ({"field": "load", "op": ">"}, "are not a filter"),
    ({"field": "load", "op": "~", "value": 1}, "is not an operator"),
    ({"field": "load", "op": ">", "value": 1, "extra": 2}, "are not a filter"),
    ({"field": "", "op": "==", "value": 1}, "empty key"),
    ({"field": "a..b", "op": "==", "value": 1}, "empty key"),
    ({"field": 3, "op": "==", "value": 1}, "field must be a str"),
    ({"field": ["a", 1], "op": "==", "value": 1}, "must list str keys"),
    ({"field": "a", "op": "in", "value": 3}, '"in" takes a list'),
    ({"field": "a", "op": "==", "value": object()}, "is not data"),
    ({"field": "a", "op": "==", "value": {1: 2}}, "str keys"),
    ({"and": {"field": "a"}}, "takes a list"),
    ({"and": [{"field": "a", "op": "==", "value": 1}, {"nope": 1}]}, "filter.and[1]"),
    ({"not": [1]}, "filter.not"),
    ({"or": [1]}, "filter.or[0]"),
]


@pytest.mark.parametrize("spec, words", INVALID)
def test_invalid_filters_say_what_and_show_an_example(spec: Any, words: str) -> None:
    with pytest.raises(InvalidFilter) as raised:
        compile_filter(spec)
    text = str(raised.value)
    assert words in text
    assert 'e.g. {"field": "load", "op": ">", "value": 0.8}' in text


def test_invalid_filter_is_a_posa_rejection_and_a_value_error() -> None:
    assert issubclass(InvalidFilter, Rejected)
    assert issubclass(InvalidFilter, ValueError)


def test_size_and_depth_are_bounded() -> None:
    deep: Any = cmp("a", "==", 1)
    for _ in range(MAX_DEPTH + 1):
        deep = {"not": deep}
    with pytest.raises(InvalidFilter, match="deeper"):
        compile_filter(deep)
    wide = {"or": [cmp("a", "==", i) for i in range(MAX_NODES + 1)]}
    with pytest.raises(InvalidFilter, match="more than"):
        compile_filter(wide)


def reference(spec: Any, body: Any) -> bool:
    """A plain interpreter of the grammar, to check the compiled closures against."""
    if "and" in spec:
        return all(reference(s, body) for s in spec["and"])
    if "or" in spec:
        return any(reference(s, body) for s in spec["or"])
    if "not" in spec:
        return not reference(spec["not"], body)
    field = spec["field"]
    keys = field.split(".") if isinstance(field, str) else list(field)
    for key in keys:
        if not isinstance(body, dict) or key not in body:
            return False
        body = body[key]
    try:
        if spec["op"] == "in":
            return body in spec["value"]
        return OPS[spec["op"]](body, spec["value"]) is True
    except TypeError:
        return False


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                    st.floats(allow_nan=True, width=32), st.sampled_from(["a", "b", "c"]),
                    st.binary(max_size=2))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner,
                                                 max_size=3)), max_leaves=8)
fields = st.one_of(st.sampled_from(["a", "b", "a.b", "a.c.b", "c"]),
                   st.lists(st.sampled_from(["a", "b", "c"]), max_size=3))
comparisons = st.builds(lambda f, o, v: {"field": f, "op": o, "value": v}, fields,
                        st.sampled_from([*OPS, "in"]),
                        st.one_of(values, st.lists(values, max_size=3)))
filters = st.recursive(comparisons, lambda inner: st.one_of(
    st.builds(lambda fs: {"and": fs}, st.lists(inner, max_size=3)),
    st.builds(lambda fs: {"or": fs}, st.lists(inner, max_size=3)),
    st.builds(lambda f: {"not": f}, inner)), max_leaves=6)
anything = st.recursive(st.one_of(scalars, st.sampled_from(["field", "op", "value", "and",
                                                             "or", "not", ">", "in"])),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(inner.filter(
                                                    lambda k: isinstance(k, (str, int))),
                                                    inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(anything)
def test_any_data_compiles_or_raises_the_clear_error(spec: Any) -> None:
    try:
        compiled = compile_filter(spec)
    except InvalidFilter as exc:
        assert "e.g." in str(exc)
    else:
        assert callable(compiled)


@settings(max_examples=300, deadline=None)
@given(filters, values)
def test_evaluation_never_raises_and_agrees_with_the_grammar(spec: Any, body: Any) -> None:
    try:
        compiled = compile_filter(spec)
    except InvalidFilter:
        return   # e.g. "in" drawn with a value that is not a list
    assert compiled(body) is reference(spec, body)
