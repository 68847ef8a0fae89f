"""The dialling end of ``nats://SERVERS/SUBJECT``: ``NatsConnection``.

A connection subscribes to an inbox subject of its own (its route at the
listener), says HELLO to the listener's subject with that inbox as reply
subject, and waits for WELCOME. NATS answers a message nobody subscribes to with
a "no responders" status: before the WELCOME that means the listener is not
(yet: interest spreads through a cluster in a moment) there, and the HELLO is
repeated for ``HELLO_PATIENCE`` seconds before ``connect`` gives up; after it,
that the listener is gone. Frames go out as DATA and MORE messages, numbered;
frames come back the same way, put together by a ``Reassembly``. A gap, a RESET
from the listener, more than ``SLOW_FACTOR`` x ``high_water_mark`` frames unread
(a slow consumer) or the link losing its server ends the connection: the frames
that arrived before it are still read, then ``recv`` and ``send`` raise
``TransportError`` and posa's streams resend on a new connection.
"""
from __future__ import annotations

import threading
import time

from posa.errors import Closed, TransportError
from posa.transport.base import Options
from posa.transport.inproc.receiver import Receiver, as_frame
from posa.transport.inproc.wakeup import Sleepers
from posa.transport.nats import link as links
from posa.transport.nats import reading
from posa.transport.nats.address import NatsAddress
from posa.transport.nats.listener import SLOW_FACTOR
from posa.transport.nats.protocol import Msg
from posa.transport.nats.wire import (
    CLOSE,
    DATA,
    HELLO,
    MORE,
    RESET,
    WELCOME,
    Gap,
    Oversize,
    Reassembly,
    pack,
    unpack,
)

__all__ = ["NatsConnection", "HELLO_PATIENCE"]

_get_ident = threading.get_ident
HELLO_PATIENCE = 2.0     # s a HELLO is repeated while nobody listens on the subject
_NO_RESPONDERS = "503"


class NatsConnection(Receiver[bytes]):
    """A connection to a ``nats://SERVERS/SUBJECT`` listener."""

    _parents = False            # (in a forked child) the parent's connection

    def __init__(self, address: NatsAddress, options: Options) -> None:
        super().__init__(str(address), options)
        self._subject = address.subject or ""
        self._gone: str | None = None       # why the connection ended
        self._sub: int | None = None
        self._answered = threading.Event()      # the HELLO's answer came
        self._answer: Exception | None = None   # None: WELCOME
        self._starting = True
        self.reading = 0                        # see posa.transport.nats.reading
        self.others = 0
        self._inbound = Reassembly(options.max_frame_size)
        self._limit = SLOW_FACTOR * options.high_water_mark
        timeout = options.send_timeout or 10.0
        self._inbox = links.new_inbox()     # (before the link: its fork hook needs _out)
        self._out = links.Outbound(self._subject, self._inbox, options.high_water_mark,
                                   self)
        self._link = links.acquire(address, self, timeout)
        try:
            self._start(timeout)
        except BaseException:
            self._mark_closed()
            self._unsubscribe()
            links.release(self._link, self, 0.0)
            raise
        self._starting = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ended" if self._gone else "open")
        return f"<NatsConnection {self._inbox} to {self.address} {state}>"

    def _start(self, timeout: float) -> None:
        link = self._link
        self._sub = link.subscribe(self._inbox, self._on_msg, timeout)
        deadline = time.monotonic() + timeout
        patience = time.monotonic() + min(HELLO_PATIENCE, timeout)
        pause = 0.01
        for _ in range(1000):
            link.control(self._subject, pack(HELLO, 0), self._inbox)
            if self._answered.wait(pause):
                if self._answer is None:
                    return
                if not isinstance(self._answer, _NoListener):
                    raise self._answer          # RESET: refused
                if time.monotonic() >= patience:
                    raise TransportError(f"no nats listener at {self.address}: nobody "
                                         "subscribes to its subject (closed, or never "
                                         "there); look the name up again") from None
                self._answer = None
                self._answered.clear()
                time.sleep(pause)       # back off: nobody listens yet
            if time.monotonic() >= deadline:
                break
            pause = min(pause * 2, 0.5)
        raise TransportError(f"the nats listener at {self.address} did not answer within "
                             f"{timeout} s")

    # -- the thread that reads the client's socket ------------------------------------------

    def _on_msg(self, msg: Msg) -> None:
        frame = None if msg.status else self._inbound.whole(msg.data)
        if frame is None:
            frame = self._unusual(msg)
            if frame is None:
                return
        if self._gone is not None:
            return
        if len(self._ready) >= self._limit:
            self._end(f"{self._limit} frames from the listener were waiting unread "
                      "(a slow consumer): this one is not delivered")
            return
        self._ready.append(frame)
        if not self._signalled and (self.others or self.reading != _get_ident()):
            self._signal()      # not for a thread that reads for itself alone
        if self._readers:
            self._readers.wake_one()

    def _unusual(self, msg: Msg) -> bytes | None:
        """What ``whole`` does not take: a status, a chunk, a control message,
        garbage, a gap; the frame it completes, if any."""
        if msg.status == _NO_RESPONDERS:
            self._fail(_NoListener(), "the nats listener is gone: nobody subscribes "
                       "to its subject any more")
            return None
        try:
            kind, seq, body = unpack(msg.data)
        except ValueError as exc:
            self._end(f"the listener sent what posa does not send: {exc}")
            return None
        if kind in (DATA, MORE):
            try:
                return self._inbound.feed(kind, seq, body)
            except (Gap, Oversize) as exc:
                self._end(f"frames from the listener were lost: {exc}")
        elif kind == WELCOME:
            if self._starting and not self._answered.is_set():
                self._answer = None
                self._answered.set()
        elif kind == RESET:
            why = body.decode("utf-8", "replace")
            self._fail(TransportError(why), why)
        return None

    def _fail(self, exc: Exception, why: str) -> None:
        if self._starting:
            if not self._answered.is_set():
                self._answer = exc
                self._answered.set()
        else:
            self._end(why)

    def _end(self, why: str) -> None:
        """The connection is over: fail sends now, receives once drained."""
        if self._gone is not None:
            return
        self._gone = why
        self._out.blocked.wake_all()
        if not self._signalled:
            self._signal()
        self._readers.wake_all()

    def link_lost(self, why: str) -> None:
        self._end(why)

    def _unsubscribe(self) -> None:
        sid, self._sub = self._sub, None
        if sid is not None:
            self._link.unsubscribe(sid)

    # -- the owner's threads ----------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Send one frame; blocks while ``high_water_mark`` frames wait for the
        NATS client. Raises ``TransportError`` (oversize, the connection ended),
        ``Timeout`` after ``send_timeout``, ``Closed`` after close."""
        self._check_send()
        if frame.__class__ is not bytes:
            frame = as_frame(frame)
        limit = self._options.max_frame_size
        if len(frame) > limit:
            raise TransportError(f"a frame of {len(frame)} bytes exceeds max_frame_size "
                                 f"{limit}; split it or raise Options.max_frame_size")
        out, hwm = self._out, self._options.high_water_mark
        if len(out.frames) >= hwm:
            out.wait_for_room(hwm, self._options.send_timeout, self._check_send,
                              f"the nats listener {self.address}")
        self._link.put(out, frame)

    def _closed_error(self) -> Closed:
        if self._parents:
            return Closed(links.parents(self.address))
        return Closed(f"this nats connection to {self.address} is closed; connect again")

    def forked(self) -> None:
        """(in a forked child, from the link's fork hook) The parent's connection:
        closed here, without a word to the listener (see ``Receiver._forked``)."""
        self._forked()
        self._parents = True
        self._out.blocked = Sleepers()

    def _check_send(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._gone is not None:
            raise TransportError(self._gone)

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``. Raises ``Closed`` after
        close, ``TransportError`` once the connection ended and what came is read."""
        if self._closed:
            raise self._closed_error()
        ready = self._ready
        try:
            return ready.popleft()
        except IndexError:
            pass
        if self._unsignal():
            try:
                return ready.popleft()
            except IndexError:
                pass
        if self._gone is not None:
            try:
                return ready.popleft()
            except IndexError:
                raise TransportError(self._gone) from None
        return None

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``recv_nowait`` may return a frame (or
        raise): what a blocking driver calls instead of polling ``fileno()``.
        The thread reads the client's socket itself unless another thread does
        (``posa.transport.nats.reading``)."""
        if self._ready or self._gone is not None or self._closed:
            return True
        return reading.wait(self._link.client, self, timeout)

    def arrived(self) -> bool:
        """A frame is ready, or the connection is over (the descriptor drained)."""
        if self._ready or self._gone is not None or self._closed:
            return True
        return self._signalled and self._unsignal() and (
            bool(self._ready) or self._gone is not None)

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame from the listener. Raises ``Timeout``,
        ``Closed``, ``TransportError``."""
        frame = self.recv_nowait()
        if frame is not None:
            return frame
        return self._wait_for_frame(self.recv_nowait, timeout,
                                    f"the nats connection to {self.address}")

    def close(self) -> None:
        """Say CLOSE to the listener after what was sent (the link flushes for up
        to ``linger``), and close. Idempotent."""
        if not self._mark_closed():
            return
        link = self._link
        if self._gone is None:
            link.control(self._subject, pack(CLOSE, 0), self._inbox)
        self._unsubscribe()
        self._ready.clear()
        self._out.blocked.wake_all()
        links.release(link, self, self._options.linger)
        self._release()


class _NoListener(Exception):
    """Nobody subscribes to the listener's subject."""
