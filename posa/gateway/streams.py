"""A channel's events as Server-Sent Events: ``GET /v1/subscribe/{channel}``.

``?topic=`` (repeatable, prefixes; default all) and ``?filter=`` (a content
filter as JSON, docs/event-channel.md) select at the channel.  Each event is

    id: SEQ
    event: event
    data: {"seq": SEQ, "topic": ..., "body": ..., "channel": ...}

with ``id`` the channel's sequence number, so a client that reconnects with
``Last-Event-ID: SEQ`` (browsers' ``EventSource`` does it by itself), or
``?from=SEQ+1``, gets the channel's history from there on.  A hole comes as an
``event: gap`` before the event that follows it, with the ``Gap`` fields
(``reason``: dropped, history, restart; ``after``; ``count``).

A slow consumer is bounded: the gateway keeps at most ``--sse-buffer`` events
for a stream beyond what the socket holds.  When a client falls further behind,
the gateway ends the stream: after the events already written comes an
``event: gap`` of reason ``slow-consumer`` (``after`` = the last seq written),
then the end of the response; a client that has not read it all 10 s later is
cut.  It resumes from its last id and the channel replays what its history
still holds (a ``history`` gap for the rest).
Comments (``: keep-alive``) every 15 s keep proxies from cutting a quiet stream.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from posa.aio import Subscriber
from posa.channel.events import Event
from posa.channel.predicate import InvalidFilter, compile_filter
from posa.channel.subscriber import Subscriber as SyncSubscriber
from posa.errors import Timeout, Unauthorized
from posa.gateway.http import GATEWAY, principal, to_json
from posa.gateway.problems import BadInput
from posa.wire.names import validate_name

__all__ = ["add_routes", "frame"]

log = logging.getLogger("posa.gateway")

KEEP_ALIVE = 15.0
CUT_GRACE = 10.0        # seconds a cut slow consumer has to read what was sent


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {to_json(data)}\n\n".encode()


def _frames(ev: Event) -> bytes:
    out = b""
    if ev.gap is not None:
        out += frame("gap", {"reason": ev.gap.reason, "after": ev.gap.after,
                             "count": ev.gap.count})
    return out + frame("event", {"seq": ev.seq, "topic": ev.topic, "body": ev.body,
                                 "channel": ev.channel}, ev.seq)


def _selection(request: web.Request) -> dict[str, Any]:
    query = request.query
    start = query.get("from") or None
    last = request.headers.get("Last-Event-ID")
    try:
        from_seq = int(last) + 1 if last else int(start) if start else None
        flt = json.loads(query["filter"]) if "filter" in query else None
        if flt is not None:
            compile_filter(flt)
    except InvalidFilter as exc:
        raise BadInput(f"?filter=: {exc}") from None
    except (ValueError, RecursionError):
        raise BadInput("Last-Event-ID and ?from= must be seqs, ?filter= JSON") from None
    return {"topics": query.getall("topic", [""]), "filter": flt, "from_seq": from_seq}


class _Stream:
    """Events read from the subscriber, waiting to be written (bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ready: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.overflow = False
        self.ended: BaseException | None = None
        self.writing = False
        self.taken = asyncio.Event()        # the writer took what was ready

    async def pump(self, sub: Subscriber, cut: Callable[[], None]) -> None:
        """Read events while there is room. Full while the writer is stuck on the
        socket: the client is too slow (``cut``). Full while it is not: wait for it."""
        try:
            while True:
                if len(self.ready) >= self.limit:
                    if self.writing:
                        self.overflow = True
                        cut()
                        return
                    self.taken.clear()
                    await self.taken.wait()
                    continue
                try:
                    events = await sub.receive_many(min(256, self.limit - len(self.ready)),
                                                    timeout=1.0)
                except Timeout:
                    continue
                self.ready.extend(events)
                self.wake.set()
                await asyncio.sleep(0)      # let the writer take them
        except Exception as exc:  # told to the client
            self.ended = exc
            self.wake.set()


class _Adopted(Subscriber):
    """An async subscriber around a ``Subscriber`` made off the loop (subscribing
    waits for the channel's answer)."""

    def __init__(self, sync: SyncSubscriber) -> None:
        super(Subscriber, self).__init__()
        self.sync = sync

    async def close_now(self) -> None:
        """Close from another thread: a receive waiting on the worker ends at once.
        (In a forked child, on the child's loop; the worker is left to the parent.)"""
        await asyncio.get_running_loop().run_in_executor(None, self.sync.close)
        self._worker.shutdown(wait=False)


async def subscribe(request: web.Request) -> web.StreamResponse:
    channel = validate_name(request.match_info["channel"])
    if not principal(request).may_reach(channel):
        raise Unauthorized(f"this token may not reach {channel!r}")
    gateway = request.app[GATEWAY]
    selection = _selection(request)
    sub = _Adopted(await gateway.blocking(functools.partial(
        SyncSubscriber, channel, registry=gateway.registry,
        authenticator=gateway.authenticator(gateway.peer.name), **selection)))
    gateway.counters["sse_streams"] += 1
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await _run(request, response, sub, _Stream(gateway.limits.sse_buffer))
        return response
    finally:
        try:
            await sub.close_now()
        except Exception:       # the stream is over either way
            log.warning("gateway: closing a subscriber of %s failed", channel, exc_info=True)


async def _run(request: web.Request, response: web.StreamResponse, sub: Subscriber,
               stream: _Stream) -> None:
    gateway = request.app[GATEWAY]
    last = 0

    def cut() -> None:
        """End the stream behind what the transport holds: the gap, the end of the
        body (aiohttp writes nothing to a closing transport)."""
        transport = request.transport
        if transport is None:
            return
        data = _slow(last)
        if response.headers.get("Transfer-Encoding") == "chunked":
            data = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
        transport.write(data)       # whole chunks only are buffered while it waits
        transport.close()
        gateway.loop.call_later(CUT_GRACE, transport.abort)
        gateway.counters["sse_slow_consumers"] += 1

    pump = asyncio.ensure_future(stream.pump(sub, cut))
    try:
        while True:
            try:
                await asyncio.wait_for(stream.wake.wait(), KEEP_ALIVE)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            stream.wake.clear()
            while stream.ready and not stream.overflow:
                batch = list(stream.ready)
                stream.ready.clear()
                stream.taken.set()
                last = batch[-1].seq    # handed to the transport whole before it waits
                gateway.counters["sse_events"] += len(batch)
                stream.writing = True
                await response.write(b"".join(map(_frames, batch)))
                stream.writing = False
            if stream.overflow:
                return                  # cut: the transport is closing behind the gap
            if stream.ended is not None:
                await response.write(frame(
                    "error", {"detail": str(stream.ended) or type(stream.ended).__name__}))
                await response.write_eof()
                return
    finally:
        pump.cancel()


def _slow(last: int) -> bytes:
    return frame("gap", {"reason": "slow-consumer", "after": last, "count": None})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/subscribe/{channel:.+}", subscribe)
