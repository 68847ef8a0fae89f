"""Op tables (posa.wire.schema): a table of (request body -> outcome) cases, then
the client side (``request``), binding to handlers and the generated docs."""
from __future__ import annotations

import re
from typing import Any

import pytest

from posa.errors import Rejected
from posa.wire.schema import REQUIRED, Field, Op, OpTable

TABLE = OpTable("toy", [
    Op("put", (Field("key", str),
               Field("value", (int, float)),
               Field("ttl", int, 60, lambda ttl: ttl > 0, "an integer > 0"),
               Field("tags", list, ()),
               Field("flag", bool, False)),
       doc="store `value` under `key`"),
    Op("get", (Field("key", str),), doc="the value of `key`"),
    Op("drop", (), oneway=True, doc="forget everything"),
])

# (body, outcome): the parsed (op, fields), or a regular expression the Rejected
# text must match
CASES: list[tuple[Any, tuple[str, dict[str, Any]] | str]] = [
    # well formed: defaults fill what is absent or nil
    ({"op": "get", "key": "a"}, ("get", {"key": "a"})),
    ({"op": "put", "key": "a", "value": 1},
     ("put", {"key": "a", "value": 1, "ttl": 60, "tags": (), "flag": False})),
    ({"op": "put", "key": "a", "value": 1.5, "ttl": None, "tags": ["x"], "flag": True},
     ("put", {"key": "a", "value": 1.5, "ttl": 60, "tags": ["x"], "flag": True})),
    ({"op": "get", "key": "a", "extra": 1}, ("get", {"key": "a"})),    # extras ignored
    ({"op": "drop"}, ("drop", {})),
    # not a request at all
    (None, r"^a toy request is a map with an 'op' field, one of drop, get, put; "
           r"see docs/protocol\.md$"),
    (["get", "a"], r"^a toy request is a map with an 'op' field"),
    ({"key": "a"}, r"^a toy request is a map with an 'op' field"),
    ({"op": 3}, r"^a toy request is a map with an 'op' field"),
    (b"\x81\xa2op", r"^a toy request is a map with an 'op' field"),
    # an unknown operation: the known ones are listed, a long name is cut short
    ({"op": "frob"}, r"^unknown toy operation 'frob'; known: drop, get, put$"),
    ({"op": "x" * 500}, r"^unknown toy operation 'x{59}; known: drop, get, put$"),
    # a missing field: what it is and where to read about it
    ({"op": "get"}, r"^toy operation 'get' needs the field 'key' \(a string\); "
                    r"see docs/protocol\.md$"),
    ({"op": "get", "key": None}, r"needs the field 'key'"),
    ({"op": "put", "key": "a"}, r"needs the field 'value' \(a number\)"),
    # a field of the wrong type: what it must be and what came
    ({"op": "get", "key": 7}, r"^field 'key' of toy operation 'get' must be a string, "
                              r"got int$"),
    ({"op": "put", "key": "a", "value": "1"}, r"'value' .* must be a number, got str$"),
    ({"op": "put", "key": "a", "value": True}, r"'value' .* must be a number, got bool$"),
    ({"op": "put", "key": "a", "value": 1, "ttl": 1.0}, r"'ttl' .* must be an integer"),
    ({"op": "put", "key": "a", "value": 1, "tags": "x"}, r"'tags' .* must be a list"),
    ({"op": "put", "key": "a", "value": 1, "flag": 1}, r"'flag' .* must be a boolean"),
    # a field that fails its check: the words of the check
    ({"op": "put", "key": "a", "value": 1, "ttl": 0},
     r"^field 'ttl' of toy operation 'put' must be an integer > 0$"),
]


@pytest.mark.parametrize("body, outcome", CASES, ids=[repr(c[0])[:40] for c in CASES])
def test_parse(body: Any, outcome: tuple[str, dict[str, Any]] | str) -> None:
    if isinstance(outcome, str):
        with pytest.raises(Rejected) as refused:
            TABLE.parse(body)
        assert re.search(outcome, str(refused.value)), str(refused.value)
    else:
        op, fields = TABLE.parse(body)
        assert (op.name, fields) == outcome


def test_request_builds_what_parse_takes() -> None:
    body = TABLE.request("put", key="a", value=2, ttl=None)
    assert body == {"op": "put", "key": "a", "value": 2}         # None is not sent
    assert TABLE.parse(body)[1]["ttl"] == 60
    # the operation's name is positional only: a field may be called "name"
    named = OpTable("n", [Op("lookup", (Field("name", str),))])
    assert named.request("lookup", name="x") == {"op": "lookup", "name": "x"}
    with pytest.raises(TypeError, match=r"has no field\(s\) colour, size"):
        TABLE.request("get", key="a", size=1, colour="red")
    with pytest.raises(KeyError):
        TABLE.request("frob")


def test_bind_finds_every_handler_or_fails_at_once() -> None:
    class Server:
        def _op_put(self, msg: Any, fields: dict[str, Any]) -> Any:
            return ("put", fields["key"])

        def _op_get(self, msg: Any, fields: dict[str, Any]) -> Any:
            return ("get", fields["key"])

        def _op_drop(self, msg: Any, fields: dict[str, Any]) -> Any:
            return "dropped"

    handlers = TABLE.bind(Server())
    op, fields = TABLE.parse({"op": "get", "key": "k"})
    assert handlers[op.name](None, fields) == ("get", "k")
    assert set(handlers) == {"put", "get", "drop"}

    class Lacking:
        def _op_get(self, msg: Any, fields: dict[str, Any]) -> Any:
            return None
    with pytest.raises(TypeError, match=r"Lacking has no handler _op_put for the toy "
                                        r"operation 'put'"):
        TABLE.bind(Lacking())


def test_a_table_is_well_formed() -> None:
    with pytest.raises(ValueError, match="two operations share a name"):
        OpTable("twice", [Op("a"), Op("a")])
    assert "get" in TABLE and "frob" not in TABLE
    assert Field("x", str).required and not Field("x", str, None).required
    assert repr(REQUIRED) == "REQUIRED"


def test_describe() -> None:
    assert TABLE.describe().splitlines() == [
        "| op | fields | answered | what it does |",
        "|---|---|---|---|",
        "| `put` | `key` (a string), `value` (a number), `ttl`? (an integer), "
        "`tags`? (a list), `flag`? (a boolean) | yes | store `value` under `key` |",
        "| `get` | `key` (a string) | yes | the value of `key` |",
        "| `drop` | – | no | forget everything |",
    ]
