"""The publisher's proxy: publishes events to a channel by its name.

``publish`` only appends to a local bounded buffer (a deque, without a lock:
atomic under the GIL); one background thread takes the buffer in batches,
encodes the bodies of a batch once (``posa.channel.protocol.encode_chunks``,
split to fit a frame) and hands each chunk to a reliable stream (``Sender``) as
one ``publish``. Nothing waits for the network in ``publish``: the publisher
waits only when its buffer is full (the channel does not keep up, or a
``block`` subscriber holds it back), and then for at most its timeout.

Invariants: the buffer holds at most ``buffer`` events; an event whose body is
not msgpack data is dropped, counted and reported once (``Rejected``) by the
next ``publish`` or ``flush``; ``flush`` returns only when the channel
acknowledged everything published before it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from posa.channel.protocol import FRAME_MARGIN, encode_chunks, publish_body
from posa.delivery.sender import Sender
from posa.errors import Closed, NameNotFound, PosaError, Rejected, Timeout, TransportError
from posa.naming.registration import Registry, resolver
from posa.naming.resolve import open_registry
from posa.wire.codec import Codec, CodecLimits
from posa.wire.names import validate_name

__all__ = ["Publisher"]

log = logging.getLogger("posa.channel.publisher")


class Publisher:
    """Publishes events to a channel by its name (fire and forget, batched).

    ``publish`` puts an event in a local buffer (at most ``buffer`` events) that
    one background thread sends in batches of up to ``batch`` events, as soon as
    a batch is full or ``linger`` seconds after its first event.  Delivery to the
    channel is reliable and ordered; ``flush`` waits until the channel has
    acknowledged everything published so far.  When the channel does not keep
    up (or a ``block`` subscriber stalls it) the buffer fills and ``publish``
    waits, up to its ``timeout``, then raises ``Timeout``.  An event whose body
    is not msgpack data is dropped, counted in ``rejected``, and reported by
    the next ``publish`` or ``flush`` with ``Rejected``.  ``sent`` counts the
    events handed to the channel."""

    def __init__(self, channel: str, *, registry: Registry | None = None,
                 dispatcher: str | None = None, batch: int = 1024, linger: float = 0.002,
                 buffer: int = 65536, window: int = 16, timeout: float = 10.0,
                 limits: CodecLimits | None = None) -> None:
        self.channel = validate_name(channel)
        if batch < 1 or buffer < batch or window < 1 or linger < 0:
            raise ValueError("need batch >= 1, buffer >= batch, window >= 1, linger >= 0")
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        self.batch = batch
        self.linger = linger
        self.buffer = buffer
        self.timeout = timeout
        self._sender = Sender("", resolve=resolver(self.registry), window=window,
                              codec=Codec(limits))
        self._max_bytes = self._sender.codec.limits.max_frame_size - FRAME_MARGIN
        # publish() appends to the deque without a lock (atomic under the GIL)
        # and takes the condition only to wake the sending thread or to wait
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = 0           # taken by the sending thread, not yet handed over
        self._flushes = 0             # flush requests made
        self._flushed = 0             # flush requests completed
        self._flush_error: PosaError | None = None
        self._error: PosaError | None = None     # reported once by publish/flush
        self._problem: PosaError | None = None   # why sending is stuck, for Timeout texts
        self._closing = False
        self._attention = False       # an error to report, or closing: publish() must look
        self._idle = False            # the sending thread waits for a first event
        self._lingering = False       # the sending thread waits for a batch to fill
        self.sent = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"posa-publisher-{channel}")
        self._thread.start()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Publisher({self.channel!r}, {len(self._queue)} queued, {self.sent} sent)"

    def publish(self, topic: str, body: Any = None, *, timeout: float | None = None) -> None:
        """Queue one event for the channel. Waits up to ``timeout`` (default: the
        publisher's; 0: not at all) while the local buffer is full, then raises
        ``Timeout``; ``Closed`` after ``close()``; ``Rejected`` for a topic that
        is not a str of at most 255 characters."""
        if type(topic) is not str or len(topic) > 255:
            raise Rejected(f"a topic must be a str of at most 255 characters, got "
                           f"{topic!r:.40}, e.g. 'link/down'")
        queue = self._queue
        if len(queue) >= self.buffer or self._attention:
            with self._cond:
                self._wait_for_room(timeout)
        queue.append((topic, body))
        # wake the sending thread only if it sleeps: idle, or letting a batch fill
        if self._idle or (self._lingering and len(queue) >= self.batch):
            with self._cond:
                self._cond.notify()

    def publish_many(self, events: Iterable[tuple[str, Any]], *,
                     timeout: float | None = None) -> int:
        """Queue ``(topic, body)`` pairs in order; returns how many. Same errors as
        ``publish``; on an error, the events before it are queued."""
        done = 0
        for topic, body in events:
            self.publish(topic, body, timeout=timeout)
            done += 1
        return done

    @property
    def pending(self) -> int:
        """Events published but not yet handed to the channel."""
        return len(self._queue) + self._in_flight

    def _wait_for_room(self, timeout: float | None) -> None:
        """With the condition held: raise a pending error, or wait for room."""
        if self._closing:
            raise Closed(f"the publisher for {self.channel!r} is closed")
        self._raise_error()
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while len(self._queue) >= self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                why = f" ({self._problem})" if self._problem is not None else ""
                raise Timeout(f"channel {self.channel!r} did not take events for {wait} s: "
                              f"the publisher's buffer of {self.buffer} events is full"
                              f"{why}; is the channel running, and are 'block' "
                              "subscribers keeping up?")
            self._cond.wait(remaining)
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            self._attention = self._closing
            raise error

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the channel acknowledged every event published so far.
        Raises ``Timeout`` (naming why, if known) or an error held for report."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            self._flushes += 1
            ticket = self._flushes
            self._cond.notify()
            while self._flushed < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    why = f" ({self._problem})" if self._problem is not None else ""
                    raise Timeout(f"events to channel {self.channel!r} not acknowledged "
                                  f"within {wait} s{why}; is the channel running?")
                self._cond.wait(remaining)
            error, self._flush_error = self._flush_error, None
            self._raise_error()
        if error is not None:
            raise error

    def close(self, timeout: float = 5.0) -> None:
        """Send what is buffered (waiting up to ``timeout``) and stop. Idempotent.
        Raises ``Timeout``, saying how many events were not delivered, if the
        channel did not acknowledge them in time."""
        if self._closing:
            return
        failure: Timeout | None = None
        try:
            self.flush(timeout)
        except Timeout as exc:
            failure = exc
        except PosaError:
            pass  # reported already, or reported to nobody: the publisher is closing
        with self._cond:
            self._closing = self._attention = True
            unsent = self.pending
            self._cond.notify_all()
        self._thread.join(timeout)
        self._sender.close(linger=0)
        if self._owns_registry:
            self.registry.close()
        if failure is not None:
            raise Timeout(f"publisher closed with {unsent} event(s) for {self.channel!r} "
                          f"not handed over: {failure}")

    # -- the sending thread ----------------------------------------------------------
    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                self._idle = True
                while not queue and self._flushed == self._flushes and not self._closing:
                    cond.wait()
                self._idle = False
                if self._closing:
                    return
                if len(queue) < self.batch and self._flushed == self._flushes \
                        and self.linger > 0:
                    self._lingering = True
                    cond.wait(self.linger)    # let the batch fill, at most linger
                    self._lingering = False
                flush_ticket = self._flushes
            backlog = len(queue)              # later ones wait for the next round
            while backlog > 0:
                take = min(backlog, self.batch)
                backlog -= take
                popleft = queue.popleft
                events = [popleft() for _ in range(take)]
                self._in_flight = take
                with cond:
                    cond.notify_all()         # room for publishers waiting on a full buffer
                topics, bodies = zip(*events)
                try:
                    self._send(topics, bodies)
                except Closed:
                    return
                self._in_flight = 0
                self.sent += take
            if flush_ticket > self._flushed:
                self._finish_flush(flush_ticket)

    def _finish_flush(self, ticket: int) -> None:
        error: PosaError | None = None
        try:
            self._sender.flush(self.timeout)
        except PosaError as exc:
            error = exc
        with self._cond:
            if error is not None:
                self._flush_error = error
            else:
                self._problem = None
            self._flushed = ticket
            self._cond.notify_all()

    def _send(self, topics: Sequence[str], bodies: Sequence[Any]) -> None:
        """Encode the bodies once and hand them to the reliable stream; retry
        while the channel cannot be found or reached."""
        budget = self._max_bytes - sum(map(len, topics)) - 2 * len(topics)
        chunks, bad = encode_chunks(lambda s, e: bodies[s:e], len(topics), budget)
        if bad:
            self._report_bad(bad, topics, bodies)
        uniform = topics.count(topics[0]) == len(topics)
        for start, end, blob in chunks:
            self._hand_over(publish_body(topics[0] if uniform else list(topics[start:end]),
                                         blob))

    def _report_bad(self, bad: list[int], topics: Sequence[str], bodies: Sequence[Any]
                    ) -> None:
        first = bad[0]
        error = Rejected(f"{len(bad)} event(s) dropped: the body of the event on topic "
                         f"{topics[first]!r} ({type(bodies[first]).__name__}) is not "
                         "msgpack data or exceeds the frame size; publish None, bool, int, "
                         "float, str, bytes, lists and str-keyed maps")
        with self._cond:
            self.rejected += len(bad)
            self._error = error
            self._attention = True
        log.warning("publisher for %s: %s", self.channel, error)

    def _hand_over(self, body: dict[str, Any]) -> None:
        delay = 0.01
        while True:
            try:
                self._sender.send(self.channel, body, timeout=self.timeout)
                return
            except Timeout as exc:
                self._problem = exc   # the frame is queued: the stream keeps trying
                return
            except (NameNotFound, TransportError) as exc:
                self._problem = exc   # not queued: find the channel again, then resend
            with self._cond:
                if self._closing:
                    raise Closed(f"the publisher for {self.channel!r} is closed")
                self._cond.wait(delay)
            delay = min(delay * 2, 0.5)
