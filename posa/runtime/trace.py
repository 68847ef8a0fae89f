"""W3C trace context (``traceparent``, ``tracestate``) carried in message headers.

A message sent while a trace is active carries its context; a handler runs
inside the context its message came with, so what it sends continues the
trace.  Two sources of "a trace is active", chosen once at import:

- with ``opentelemetry-api`` installed: OpenTelemetry's current context.  The
  headers are written and read by its configured propagator
  (``opentelemetry.propagate``: W3C trace context and baggage by default), and
  a handler runs inside a span of its own (``handle NAME``, kind SERVER for a
  request, CONSUMER for a one-way message), child of the sender's span;
- without it: posa's own context variable, holding the ``traceparent`` and
  ``tracestate`` a handler's message came with (or ``context`` set), passed on
  unchanged.

The cost on the send path when no trace is active is one context-variable
read (``active()``: OpenTelemetry's ``get_current`` or ``ContextVar.get``);
nothing is added to the message.  A ``traceparent`` the caller put in the
headers by hand is left as it is.  Headers that come in are not trusted: a
``traceparent`` that is not the W3C form is ignored, ``tracestate`` is cut to
512 characters.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

__all__ = ["active", "outgoing", "within", "context", "headers", "handling", "carried",
           "OTEL"]

TRACESTATE_MAX = 512
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}"
                          r"-[0-9a-f]{2}(-.*)?$")

# posa's own context (without OpenTelemetry): the received headers, or None
_current: ContextVar[dict[str, str] | None] = ContextVar("posa_trace", default=None)

_otel_context: ModuleType | None
try:
    from opentelemetry import context as _otel_context
except ImportError:         # no tracing library: posa's own context
    _otel_context = None

OTEL = _otel_context is not None
"""True when OpenTelemetry's API is installed (and so spans are made)."""

active: Callable[[], Any] = _otel_context.get_current if _otel_context is not None \
    else _current.get
"""Truthy while a trace context is active: the send path's one check."""


def _checked(carrier: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The trace headers of ``carrier`` if its ``traceparent`` is well formed."""
    if not isinstance(carrier, Mapping):
        return None
    parent = carrier.get("traceparent")
    if type(parent) is not str or not _TRACEPARENT.match(parent):
        return None
    found = {"traceparent": parent}
    state = carrier.get("tracestate")
    if type(state) is str and state:
        found["tracestate"] = state[:TRACESTATE_MAX]
    return found


carried = _checked
"""``carried(value)``: ``{"traceparent", "tracestate"?}`` of a value received (an
event's trace, headers), or None when it holds no well-formed ``traceparent``."""


def headers() -> dict[str, str]:
    """The trace headers a message sent now would carry ({} outside a trace)."""
    if _otel_context is not None:
        from opentelemetry import propagate
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier
    return dict(_current.get() or {})


def outgoing(given: dict[str, Any] | None) -> dict[str, Any] | None:
    """``given`` headers with the active trace's added (a copy; ``given`` is the
    caller's). Called by the send path only while ``active()`` is truthy."""
    if given and "traceparent" in given:
        return given                # set by hand: the caller's choice
    extra = headers()
    if not extra:
        return given
    return {**given, **extra} if given else extra


@contextmanager
def context(carrier: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block inside the trace context of ``carrier`` (headers: a message's,
    an HTTP request's, an event's ``trace``); a carrier without a well-formed
    ``traceparent`` (or None) changes nothing."""
    if _otel_context is not None:
        from opentelemetry import propagate
        if _checked(carrier) is None:
            yield
            return
        assert carrier is not None
        token = _otel_context.attach(propagate.extract(_strings(carrier)))
        try:
            yield
        finally:
            _otel_context.detach(token)
        return
    found = _checked(carrier)
    if found is None:
        yield
        return
    own = _current.set(found)
    try:
        yield
    finally:
        _current.reset(own)


def within(carrier: Mapping[str, Any], name: str, request: bool,
           handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``handler`` run inside the context of ``carrier`` (a received message's
    headers), in a span ``handle NAME`` when OpenTelemetry is installed."""
    if _checked(carrier) is None:
        return handler

    def run(msg: Any) -> Any:
        with handling(carrier, name, request):
            return handler(msg)
    return run


@contextmanager
def handling(carrier: Mapping[str, Any] | None, name: str,
             request: bool = False) -> Iterator[None]:
    """Run the block inside the context of ``carrier`` (what a message or an event
    came with) and, when OpenTelemetry is installed, in a span ``handle NAME``
    (kind SERVER for a request, CONSUMER otherwise), child of the sender's span.
    A carrier without a well-formed ``traceparent`` (or None) changes nothing."""
    if _otel_context is None or _checked(carrier) is None:
        with context(carrier):
            yield
        return
    assert carrier is not None
    from opentelemetry import propagate, trace
    kind = trace.SpanKind.SERVER if request else trace.SpanKind.CONSUMER
    with trace.get_tracer("posa").start_as_current_span(
            f"handle {name}", context=propagate.extract(_strings(carrier)), kind=kind,
            attributes={"messaging.system": "posa", "messaging.destination.name": name,
                        "messaging.operation": "process"}):
        yield


def _strings(carrier: Mapping[str, Any]) -> dict[str, str]:
    """The string-valued headers (what a propagator may read), bounded."""
    return {k: v[:TRACESTATE_MAX] if k == "tracestate" else v
            for k, v in carrier.items() if type(k) is str and type(v) is str}
