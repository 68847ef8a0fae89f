"""The lean lane: a stream-less request a peer answers at once.

A request outside any stream (stream 0: an uncached lookup, docs/protocol.md)
has no order to keep, no acknowledgement to send and no reply to keep for a
repeat, as its requester asks again rather than resends. A peer that serves with
``Peer.serve(quick=...)`` answers such requests here, straight from the drain,
with admission, the refusal while draining, the deadline and the errors as on
the general path (``posa.delivery.intake``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from posa.errors import PosaError
from posa.wire.codec import Kind, Message, error_body

if TYPE_CHECKING:
    from posa.delivery.intake import Intake
    from posa.delivery.receiver import Endpoint

__all__ = ["DEFERRED", "Packed", "quickly", "value_of"]

log = logging.getLogger("posa.peer")

DEFERRED = object()
"""Return this from a handler to reply later with ``Peer.reply``."""



class Packed(bytes):
    """A body already packed (the msgpack bytes of one value), sent as it is:
    returned from a ``quick`` handler as its reply, or given to
    ``Forwarder.send_locked`` as a SEND's body (a channel's delivery, packed once
    for all the subscribers it goes to). The frame is the one the value itself
    would make, byte for byte."""

    __slots__ = ()


def value_of(body: Any) -> Any:
    """``body`` itself, or the value a ``Packed`` body encodes (to pack it whole)."""
    return msgpack.unpackb(body) if body.__class__ is Packed else body


_REPLY, _ERROR = Kind.REPLY, Kind.ERROR
_monotonic = time.monotonic


def quickly(intake: Intake, quick: Callable[[Message], Any], msg: Message,
            endpoint: Endpoint, route: Any) -> bool:
    """Answer the stream-less request ``msg`` with ``quick`` at once, on the lean
    lane: no stream to order or acknowledge, no reply kept for a repeat (a
    stream-less request is asked again, not resent), no trace or budget to
    enter (``quick`` answers from what the peer holds, or defers). Admission,
    the refusal while draining, the deadline and the errors are as on the
    general path, which takes a request with an idempotency key or a trace
    context, or for a name not served here (False)."""
    headers = msg.headers
    if (intake.draining or msg.recipient not in intake.receiver.recipients
            or "key" in headers or "traceparent" in headers):
        return False
    msg.route = (endpoint, route)
    gatekeeper = intake.gatekeeper
    counted = gatekeeper.in_flight is not None     # (no call to count nothing)
    if counted and (refused := gatekeeper.enter(msg)) is not None:
        intake.answer(msg, _ERROR, error_body(refused))
        return True
    intake.stats["received"] += 1
    ttl = headers.get("ttl")        # its deadline (what open_request sets, inline)
    if type(ttl) is int and ttl > 0:
        msg.deadline = _monotonic() + ttl / 1000.0
    try:
        body = quick(msg)
    except Exception as exc:
        kind, body = _ERROR, error_body(exc)
    else:
        if body is DEFERRED:
            return True
        kind = _REPLY
    if counted:
        gatekeeper.leave(msg)
    observe, deadline = intake.observe, msg.deadline
    if observe is not None and deadline is not None:   # arrival = deadline - ttl
        observe(_monotonic() - deadline + headers["ttl"] / 1000.0)
    requests = intake.receiver.requests
    try:
        endpoint.listener.send(route, requests.packed_reply(msg, body)
                               if body.__class__ is Packed
                               else requests.frame(msg, kind, body)[1])
    except PosaError as exc:
        log.info("peer %s: reply not sent (%s); the requester will ask again",
                 intake.name, exc)
    return True
