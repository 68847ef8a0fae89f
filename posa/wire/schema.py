"""Operation tables: how every posa service declares the requests it takes.

A service's wire protocol is a map body with an ``"op"`` field and named fields
(docs/protocol.md). Each service (the dispatcher, the event channel, the work
queue) declares its operations once, in its protocol module, as an ``OpTable``
of ``Op`` entries with typed ``Field`` s. The same table

- parses and checks a request on the server side (``OpTable.parse``), so every
  service refuses a malformed request with the same kind of ``Rejected`` text,
  one that says what to send instead;
- builds a request on the client side (``OpTable.request``), so a client cannot
  drift from its server;
- binds the operations to a server's handler methods (``OpTable.bind``), failing
  at construction if one has none;
- documents itself (``OpTable.describe``).

Pure: no I/O, no posa module above ``posa.errors``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posa.errors import Rejected

__all__ = ["REQUIRED", "Field", "Op", "OpTable"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a field that a request must carry."""

_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "a list", dict: "a map", bytes: "bytes", type(None): "nil"}


def _describe_kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) >= {int, float}:
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)


@dataclass(frozen=True)
class Field:
    """One named field of a request: its type, its default (``REQUIRED`` if it
    has none) and, optionally, a further check with the words that describe it.
    A field that is absent or nil takes its default."""

    name: str
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    check: Callable[[Any], bool] | None = None
    must: str = ""              # what ``check`` demands, for the refusal text
    kinds: tuple[type, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds",
                           self.kind if isinstance(self.kind, tuple) else (self.kind,))

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def take(self, op: str, service: str, body: Mapping[str, Any]) -> Any:
        """The field's value in ``body`` (or its default); ``Rejected`` if it is
        missing, of the wrong type, or fails its check."""
        value = body.get(self.name)
        if value is None:       # absent or nil: the default
            if self.default is REQUIRED:
                raise Rejected(f"{service} operation {op!r} needs the field {self.name!r} "
                               f"({_describe_kind(self.kind)}); see docs/protocol.md")
            return self.default
        kinds = self.kinds
        if (not isinstance(value, kinds)
                or (isinstance(value, bool) and bool not in kinds)):
            raise Rejected(f"field {self.name!r} of {service} operation {op!r} must be "
                           f"{_describe_kind(self.kind)}, got {type(value).__name__}")
        if self.check is not None and not self.check(value):
            raise Rejected(f"field {self.name!r} of {service} operation {op!r} must be "
                           f"{self.must or 'valid'}")
        return value


@dataclass(frozen=True)
class Op:
    """One operation: its name, fields, whether it is answered (a request) or
    one-way (a send), and a line of documentation."""

    name: str
    fields: tuple[Field, ...] = ()
    oneway: bool = False
    doc: str = ""
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    _plan: tuple[tuple[str, tuple[type, ...], Any, Field], ...] = field(
        init=False, repr=False, compare=False)
    _defaults: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(f.name for f in self.fields))
        object.__setattr__(self, "_plan", tuple(
            (f.name, f.kinds, f.check, f) for f in self.fields))
        object.__setattr__(self, "_defaults", {
            f.name: f.default for f in self.fields if not f.required})

    def parse(self, service: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The checked fields of ``body`` (defaults filled in); ``Rejected`` if
        one is missing or malformed."""
        # the hot path of every request: a value of exactly a declared type is
        # taken here; anything else (absent and required, a subclass such as bool
        # for int, the wrong type) goes to Field.take, which accepts or refuses it
        fields = self._defaults.copy()
        get = body.get
        for name, kinds, check, spec in self._plan:
            value = get(name)
            if value.__class__ in kinds and (check is None or check(value)):
                fields[name] = value
            elif value is not None or name not in fields:   # else: the default stands
                fields[name] = spec.take(self.name, service, body)
        return fields


Handler = Callable[[Any, dict[str, Any]], Any]


class OpTable:
    """The operations of one service, by name."""

    def __init__(self, service: str, ops: Sequence[Op]) -> None:
        self.service = service
        self.ops = {op.name: op for op in ops}
        if len(self.ops) != len(ops):
            raise ValueError(f"{service}: two operations share a name")
        self._known = ", ".join(sorted(self.ops))

    def __contains__(self, name: object) -> bool:
        return name in self.ops

    def op_of(self, body: Any) -> Op:
        """The operation ``body`` asks for; ``Rejected`` saying what to send if
        ``body`` is not a map with a known ``op``."""
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            raise Rejected(f"a {self.service} request is a map with an 'op' field, one of "
                           f"{self._known}; see docs/protocol.md")
        op = self.ops.get(body["op"])
        if op is None:
            raise Rejected(f"unknown {self.service} operation {body['op']!r:.60}; "
                           f"known: {self._known}")
        return op

    def parse(self, body: Any) -> tuple[Op, dict[str, Any]]:
        """The operation and its checked fields (defaults filled in)."""
        op: Op | None = None
        ops: dict[Any, Op] = self.ops       # any key: a malformed "op" just misses
        if body.__class__ is dict:          # the usual case, without op_of's checks
            try:
                op = ops.get(body.get("op"))
            except TypeError:               # an unhashable "op"
                pass
        if op is None:
            op = self.op_of(body)           # refuses it, or takes a dict subclass
        return op, op.parse(self.service, body)

    def request(self, name: str, /, **fields: Any) -> dict[str, Any]:
        """The body of a request for operation ``name`` (client side). Fields
        left out or None are not sent; an unknown field is a programming error.
        ``name`` is positional only, so an operation may have a field "name"."""
        names = self.ops[name].names
        if not names.issuperset(fields):
            raise TypeError(f"{self.service} operation {name!r} has no field(s) "
                            f"{', '.join(sorted(set(fields) - names))}")
        if None in fields.values():
            fields = {k: v for k, v in fields.items() if v is not None}
        fields["op"] = name         # ``fields`` is this call's own dict
        return fields

    def bind(self, server: object, prefix: str = "_op_") -> dict[str, Handler]:
        """``op name -> server.<prefix><name>`` for every operation; raises
        ``TypeError`` if the server lacks a handler for one."""
        handlers: dict[str, Handler] = {}
        for name in self.ops:
            method = getattr(server, prefix + name, None)
            if method is None:
                raise TypeError(f"{type(server).__name__} has no handler {prefix}{name} "
                                f"for the {self.service} operation {name!r}")
            handlers[name] = method
        return handlers

    def describe(self) -> str:
        """A Markdown table of the operations and their fields."""
        rows = ["| op | fields | answered | what it does |", "|---|---|---|---|"]
        for op in self.ops.values():
            fields = ", ".join(
                f"`{f.name}`" + ("" if f.required else "?") + f" ({_describe_kind(f.kind)})"
                for f in op.fields) or "–"
            rows.append(f"| `{op.name}` | {fields} | {'no' if op.oneway else 'yes'} "
                        f"| {op.doc} |")
        return "\n".join(rows)
