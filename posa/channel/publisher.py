"""The publisher's proxy: publishes events to a channel by its name.

``publish`` only appends to a local bounded buffer (a deque, without a lock:
atomic under the GIL); one background thread, which made first contact with the
channel while the publisher was constructed, takes the buffer in batches, encodes
a batch's bodies once (``encode_chunks``, split to fit a frame) and hands each
chunk to a reliable stream (``Sender``) as one ``publish``. ``publish`` waits
only when the buffer is full (the channel does not keep up, or a ``block``
subscriber holds it back), and then for at most its timeout.

Invariants: the buffer holds at most ``buffer`` events; a body that is not
msgpack data is dropped, counted and reported once (``Rejected``); ``flush``
returns only when the channel acknowledged everything published before it.

Trace context: an event published in a trace (``posa.runtime.trace``) takes its W3C
headers, captured in ``publish``: the publication carries ``traces``, one per
event. Outside a trace ``publish`` pays one context-variable read, no more.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.channel.inherited import watch
from posa.channel.protocol import FRAME_MARGIN, encode_chunks, publish_body
from posa.delivery.sender import Sender
from posa.delivery.waiting import run_held
from posa.errors import Closed, NameNotFound, PosaError, Rejected, Timeout, TransportError
from posa.naming.registration import Registry, resolver
from posa.naming.resolve import open_registry
from posa.runtime.trace import active as _traced  # truthy inside a trace: one check
from posa.runtime.trace import headers as _trace_headers
from posa.wire.codec import Codec, CodecLimits
from posa.wire.names import validate_name

__all__ = ["Publisher"]

log = logging.getLogger("posa.channel.publisher")
MEET = 0.5      # seconds a new publisher waits for first contact with its channel


class Publisher:
    """Publishes events to a channel by its name (fire and forget, batched).

    A new publisher resolves and connects to its channel at once (``MEET`` s at
    most; a channel not there yet is tried again at the first send). ``publish``
    buffers an event (at most ``buffer``) that one background thread sends in
    batches of up to ``batch`` events, when a batch is full or ``linger`` s after the
    first.  Delivery to the channel is reliable and ordered; ``flush`` waits
    until the channel has acknowledged everything published so far.  When the
    channel does not keep up (or a ``block`` subscriber stalls it) the buffer
    fills and ``publish`` waits, up to its ``timeout``, then raises ``Timeout``.
    A body that is not msgpack data is dropped, counted in ``rejected``, and
    reported by the next ``publish`` or ``flush`` with ``Rejected``.  ``sent``
    counts the events the channel acknowledged (``flush`` brings it up to date).
    The buffer holds the events not yet acknowledged; what the stream gave up is
    sent again (the channel drops copies by their numbers).  With keys on, give
    it ``authenticator``: it seals what it sends, as a peer does."""

    def __init__(self, channel: str, *, registry: Registry | None = None,
                 dispatcher: str | None = None, batch: int = 1024, linger: float = 0.002,
                 buffer: int = 65536, window: int = 16, timeout: float = 10.0,
                 limits: CodecLimits | None = None,
                 authenticator: Authenticator | None = None) -> None:
        self.channel = validate_name(channel)
        if batch < 1 or buffer < batch or window < 1 or linger < 0:
            raise ValueError("need batch >= 1, buffer >= batch, window >= 1, linger >= 0")
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        self.batch = batch
        self.linger = linger
        self.buffer = buffer
        self.timeout = timeout
        self._sender = Sender("", resolve=resolver(self.registry), window=window,
                              codec=Codec(limits), authenticator=authenticator)
        self._max_bytes = self._sender.codec.limits.max_frame_size - FRAME_MARGIN
        # publish() appends to the deque without a lock (atomic under the GIL)
        # and takes the condition only to wake the sending thread or to wait
        self._queue: deque[tuple[Any, ...]] = deque()   # (topic, body(, trace))
        self._tracing = False         # an event was queued with a trace (never reset)
        self._trace: tuple[Any, Any] = (None, None)   # the last context, its headers
        self._cond = threading.Condition(threading.Lock())
        self._held = 0                # events taken from the queue, not acknowledged
        self._frames: deque[tuple[dict[str, Any], int]] = deque()  # (publish, events)
        self._pid = secrets.randbits(62) + 1     # this publisher, to the channel
        self._pseq = 0                # publications numbered so far
        self._waiters = 0             # publish() calls waiting for room
        self._flushes = self._flushed = 0   # flush requests made, completed
        self._flush_error: PosaError | None = None
        self._error: PosaError | None = None     # reported once by publish/flush
        self._problem: PosaError | None = None   # why sending is stuck, for Timeout texts
        self._closing = False
        self._attention = False       # an error to report, or closing: publish() must look
        self._idle = False            # the sending thread waits for a first event
        self._lingering = False       # the sending thread waits for a batch to fill
        self.sent = self.rejected = self.undelivered = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"posa-publisher-{channel}")
        self._met = threading.Event()     # first contact made (or failed): see _meet
        watch(self)                       # refused in a forked child (inherited.py)
        self._thread.start()
        self._met.wait(MEET)

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
        if len(queue) + self._held >= self.buffer or self._attention:
            with self._cond:
                self._wait_for_room(timeout)
        context = _traced()
        if context:
            known, headers = self._trace
            if context is not known:      # a new span: its headers (made once per span)
                headers = _trace_headers() or None
                self._trace = (context, headers)
            self._tracing = True
            queue.append((topic, body, headers))
        else:
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
        """Events published and not yet acknowledged by the channel (nor rejected)."""
        return len(self._queue) + self._held

    def _wait_for_room(self, timeout: float | None) -> None:
        """With the condition held: raise a pending error, or wait for room."""
        if self._closing:
            raise Closed(f"the publisher for {self.channel!r} is closed")
        self._raise_error()
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        self._waiters += 1
        try:
            while len(self._queue) + self._held >= self.buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    why = f" ({self._problem})" if self._problem is not None else ""
                    raise Timeout(f"channel {self.channel!r} did not take events for "
                                  f"{wait} s: the publisher's buffer of {self.buffer} "
                                  f"events is full{why}; is the channel running, and are "
                                  "'block' subscribers keeping up?")
                self._cond.notify_all()       # the sending thread: wait for acks
                self._cond.wait(remaining)
        finally:
            self._waiters -= 1
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
            self._flushes = ticket = self._flushes + 1
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
        Raises ``Timeout``, saying exactly how many events the channel did not
        acknowledge (``undelivered``), if it did not acknowledge them all in time."""
        if self._closing:
            return
        failure: Timeout | None = None
        if self._sender.inherited:      # in a forked child: no flush, no wait (the
            self._closing = self._attention = True  # stream, thread, lock: the parent's)
        else:
            try:
                self.flush(timeout)
            except Timeout as exc:
                failure = exc
            except PosaError:
                pass  # reported already, or reported to nobody: the publisher is closing
            with self._cond:
                self._closing = self._attention = True
                self._cond.notify_all()
            self._thread.join(timeout)
            self._settle_final()
        self.undelivered = unsent = self.pending
        self._sender.close(linger=0)
        if self._owns_registry:
            self.registry.close()
        if failure is not None:
            raise Timeout(f"publisher closed with {unsent} event(s) for {self.channel!r} "
                          f"not acknowledged by the channel: {failure}")

    def _settle_final(self) -> None:
        """After the sending thread stopped: count what was acknowledged last."""
        if self._thread.is_alive() or not self._frames:
            return
        try:
            self._fwd.poll(self.channel)
        except (PosaError, KeyError, AttributeError):
            return
        self._settle()

    # -- the sending thread ----------------------------------------------------------
    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        self._fwd = self._sender.forwarder()
        try:
            self._meet()
            while True:
                with cond:
                    self._idle = True
                    while not (queue or self._flushed != self._flushes or self._closing
                               or self._frames):
                        cond.wait()
                    self._idle = False
                    if self._closing:
                        return
                    if queue and len(queue) < self.batch and \
                            self._flushed == self._flushes and self.linger > 0 \
                            and not self._waiters:
                        self._lingering = True
                        cond.wait(self.linger)    # let the batch fill, at most linger
                        self._lingering = False
                    flush_ticket = self._flushes
                self._send_backlog(len(queue))    # later ones wait for the next round
                if flush_ticket > self._flushed:
                    self._finish_flush(flush_ticket)
                elif self._frames and not queue:  # nothing to send: read the acks
                    self._await_acks()
        except Closed:
            return

    def _meet(self) -> None:
        """First contact with the channel, which the constructor waits for (``MEET``
        seconds at most: what fails here, the first send tries again)."""
        try:
            with self._fwd.lock:
                run_held(self._fwd.open_steps(self.channel, time.monotonic() + MEET))
        except PosaError:
            pass
        self._met.set()

    def _send_backlog(self, backlog: int) -> None:
        queue = self._queue
        while backlog > 0:
            take = min(backlog, self.batch)
            backlog -= take
            self._held += take            # held before popped: publish never sees room
            popleft = queue.popleft
            events = [popleft() for _ in range(take)]
            topics, bodies = list(zip(*events))[:2]    # (a trace is a third item)
            traces = [e[2] if len(e) > 2 else None for e in events] \
                if self._tracing else None
            self._send(topics, bodies, traces if traces and any(traces) else None)
            self._settle()

    def _settle(self) -> None:
        """Count what the channel acknowledged (frames are acknowledged in order)."""
        frames = self._frames
        acked = len(frames) - self._sender.unacknowledged()
        if acked <= 0:
            return
        with self._cond:
            count = sum(frames.popleft()[1] for _ in range(acked))
            self.sent += count
            self._held -= count
            self._cond.notify_all()       # room for publishers waiting on a full buffer

    def _await_acks(self) -> None:
        """Publishers wait for room: wait for the channel's acknowledgements."""
        try:
            self._sender.flush(self.timeout)
        except PosaError as exc:
            self._problem = exc
            self._resend()
        self._settle()

    def _finish_flush(self, ticket: int) -> None:
        error: PosaError | None = None
        try:
            self._sender.flush(self.timeout)
        except Timeout as exc:       # given up: send again (the channel drops copies)
            self._problem = exc
            error = exc
            self._resend()
        except PosaError as exc:
            error = exc
        self._settle()
        with self._cond:
            if error is not None:
                self._flush_error = error
            else:
                self._problem = None
            self._flushed = ticket
            self._cond.notify_all()

    def _send(self, topics: Sequence[str], bodies: Sequence[Any],
              traces: list[Any] | None = None) -> None:
        """Encode the bodies once and hand them to the reliable stream, as
        numbered publications kept until acknowledged (with the events' trace
        headers, when some have them)."""
        budget = self._max_bytes - sum(map(len, topics)) - 2 * len(topics)
        if traces is not None:
            budget -= sum(sum(map(len, t.values())) + 32 for t in traces if t)
        chunks, bad = encode_chunks(lambda s, e: bodies[s:e], len(topics), budget)
        if bad:
            self._report_bad(bad, topics, bodies)
        uniform = topics.count(topics[0]) == len(topics)
        for start, end, blob in chunks:
            self._pseq += 1
            part = traces[start:end] if traces is not None else None
            frame = (publish_body(topics[0] if uniform else list(topics[start:end]),
                                  blob, self._pid, self._pseq,
                                  part if part and any(part) else None), end - start)
            self._frames.append(frame)
            if not self._hand_over(frame[0]):
                self._resend()

    def _report_bad(self, bad: list[int], topics: Sequence[str], bodies: Sequence[Any]
                    ) -> None:
        first = bad[0]
        error = Rejected(f"{len(bad)} event(s) dropped: the body of the event on topic "
                         f"{topics[first]!r} ({type(bodies[first]).__name__}) is not "
                         "msgpack data or exceeds the frame size; publish None, bool, int, "
                         "float, str, bytes, lists and str-keyed maps")
        with self._cond:
            self.rejected += len(bad)
            self._held -= len(bad)
            self._error = error
            self._attention = True
        log.warning("publisher for %s: %s", self.channel, error)

    def _hand_over(self, body: dict[str, Any]) -> bool:
        """Send one publication; False if the stream gave up what it held."""
        try:
            self._sender.send(self.channel, body, timeout=self.timeout)
            return True
        except (Timeout, NameNotFound, TransportError) as exc:
            self._problem = exc
            return False

    def _resend(self) -> None:
        """The stream gave up the publications it held (or never took them):
        send every one not known acknowledged again, in order, until the
        stream takes them all (the channel drops the copies it has already),
        backing off between tries. Raises ``Closed`` once closing."""
        delay = 0.01
        while True:
            with self._cond:
                if self._closing:
                    raise Closed(f"the publisher for {self.channel!r} is closed")
                self._cond.wait(delay)
            delay = min(delay * 2, 0.5)
            if all(self._hand_over(body) for body, _ in list(self._frames)):
                return
