"""Uncached lookups on a line of their own: a stream-less REQUEST and its answer.

A lookup is a read: asking twice does no harm, so it needs none of a reliable
stream's machinery (sequence numbers, acknowledgements, a backlog to resend, the
receiver's reply cache). ``LookupLine`` sends it as a REQUEST with stream 0 (the
envelope of docs/protocol.md, unchanged: any dispatcher answers it) on a
connection of one thread's own, and waits on that connection for the REPLY or
ERROR whose correlation is the request's id: a poll of the connection, then a
read (a read that waited with the socket's own time limit would start that
time again after each signal, and never end while signals kept coming:
``posa.delivery.waiting``). A lost connection is made again
and the request sent again, until the deadline; a connect that fails for a
setting (a ``TransportError`` that is also a ``ValueError``: tls files that do not
load) is raised at once. Answers to earlier requests
that were given up (their deadline passed) are skipped.

With an authenticator every request is sealed and every answer opened and
checked; an answer that fails verification is dropped unless it says why this
side cannot be answered (a refusal, a key the dispatcher does not hold), which
is raised as ``Unauthorized`` (``posa.admission.unverified.diagnose``).

Not thread-safe: ``RegistryClient`` keeps one line per thread (``Lines``); in a
forked child the lines are made anew (the parent's connections stay the parent's:
closing them there closes the child's copies of their descriptors only, as a
connection inherited across fork closes, ``posa.transport.tcp.closing``).
"""
from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.admission.unverified import REFUSED_HEADER, diagnose, refusal_of
from posa.delivery.waiting import readable
from posa.errors import (
    Closed,
    PosaError,
    ProtocolError,
    Timeout,
    TransportError,
    Unauthorized,
    from_wire,
)
from posa.naming.protocol import DISPATCHER, registration_from_wire
from posa.naming.registration import Registration
from posa.runtime.trace import active as _traced  # truthy inside a trace: one check
from posa.runtime.trace import outgoing as _outgoing
from posa.transport import connect
from posa.transport.base import Connection, Options
from posa.wire.codec import U32 as _U32
from posa.wire.codec import Codec, Kind, Message, Pack, error_fields
from posa.wire.names import MAX_NAME_LEN

__all__ = ["LookupLine", "Lines"]

_forks = [0]        # forks this process came from: a child's lines are made anew


def _forked() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)

_packers = threading.local()


def _thread_packers() -> tuple[Pack, Callable[[Any], bytes]]:
    """The calling thread's packers for lookups (``Codec.packers``), shared by every
    client's line in it (a packer holds a buffer of its own: one per thread, not one
    per client; a lookup's frame is far below any frame limit)."""
    packers: tuple[Pack, Callable[[Any], bytes]] | None = getattr(_packers, "packers", None)
    if packers is None:
        packers = _packers.packers = Codec().packers()
    return packers


_REQUEST, _REPLY, _ERROR = Kind.REQUEST, Kind.REPLY, Kind.ERROR
_HEAD = bytes((0x99, 1, _REQUEST, 0))   # an envelope of 9, version 1, REQUEST, stream 0
_NAMES = (DISPATCHER,)
_monotonic = time.monotonic
_poll = getattr(select, "poll", None)
_POLLIN = getattr(select, "POLLIN", 1)


class LookupLine:
    """Lookups to the dispatcher at ``address`` over one connection (one thread's)."""

    def __init__(self, address: str, *, codec: Codec, options: Options,
                 authenticator: Authenticator | None = None) -> None:
        self.address = address
        self._codec = codec
        self._pack, self._packb = _thread_packers()
        # (timeout, the request's bytes between its id and the name looked up): a
        # lookup's envelope differs from the last one in those two alone (``_frame``)
        self._middle: tuple[float, bytes] = (-1.0, b"")
        self._options = options
        self._auth = authenticator
        self._conn: Connection | None = None
        # how to wait for an answer, chosen with the connection (``_watch``): the poll
        # of a poll object watching it (where the platform has no poll,
        # posa.delivery.waiting.readable)
        self._poll: Callable[[int], list[Any]] | None = None
        # a pair of sockets the poll watches too: close() from another thread shuts
        # its far end, which wakes the wait (closing the connection under a poll
        # would not); the near end is closed by whichever of lookup and close is last
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._lock = threading.Lock()
        self._busy = False
        # ids start anywhere: anonymous lines' stream-less requests seldom share one
        self._id = random.randrange(1 << 31)
        self.closed = False

    def lookup(self, name: str, timeout: float) -> Registration:
        """The dispatcher's registration of ``name``; raises what it answers
        (``NameNotFound``, ``Rejected`` ...); ``Timeout`` if it did not answer, or
        could not be reached, within ``timeout`` s."""
        now = _monotonic()
        deadline = now + timeout
        self._id = ask = self._id + 1
        envelope = self._frame(ask, name, timeout)
        with self._lock:
            if self.closed:
                raise _closed()
            self._busy = True
            if self._wake is None:
                self._wake = socket.socketpair()
        try:
            return self._ask(name, envelope, ask, deadline)
        finally:
            self._leave()

    def _ask(self, name: str, envelope: bytes, ask: int, deadline: float) -> Registration:
        """``lookup``'s attempts, until an answer, the deadline or the close."""
        auth, wake = self._auth, self._wake[0] if self._wake else None
        while True:
            if self.closed or wake is None:
                raise _closed()
            try:
                conn = self._conn
                if conn is None:
                    conn = self._conn = connect(self.address, self._options)
                    self._poll = _watch(conn, wake)
                # sealed anew for each attempt: a stream-less frame sent twice would be
                # refused as a replay (posa.admission.authenticator)
                conn.send(envelope if auth is None else auth.seal(envelope))
                msg = self._wait(conn, ask, deadline)
            except TransportError as exc:
                self._drop()
                if self.closed or isinstance(exc, ValueError):  # a setting to fix (tls
                    raise                                       # files): not retried
                if _monotonic() >= deadline:    # as a request in a stream gives up
                    raise Timeout(f"cannot look {name!r} up: the dispatcher at "
                                  f"{self.address} could not be reached in time ({exc})"
                                  ) from None
                readable(None, _backoff(deadline))
                continue
            if msg.kind == _REPLY:
                return registration_from_wire(msg.body)
            code, kind, text = error_fields(msg.body)
            raise from_wire(code, kind, text)

    def _frame(self, ask: int, name: str, timeout: float) -> bytes:
        """The REQUEST asking for ``name``: what ``Pack`` makes of it, byte for byte,
        joined from the bytes of the last one where only the id and the name differ
        (a third of the work of packing it whole); packed whole inside a trace (its
        headers differ), or for a name that is no str of at most ``MAX_NAME_LEN`` characters
        (the dispatcher refuses it) or that msgpack does not take (``Pack`` raises)."""
        if (not _traced() and 0xFFFF < ask <= 0xFFFFFFFF and name.__class__ is str
                and len(name) <= MAX_NAME_LEN):
            of, middle = self._middle
            if of != timeout:
                packb = self._packb
                middle = (packb("") + packb(DISPATCHER) + b"\x00" + packb(_ttl(timeout))
                          + b"\x82" + packb("op") + packb("lookup") + packb("name"))
                self._middle = (timeout, middle)
            try:
                return _HEAD + _U32(0xCE, ask) + middle + self._packb(name)
            except ValueError:  # (UnicodeEncodeError) the whole pack says why
                pass
        headers = _ttl(timeout)
        if _traced():           # inside a trace: the dispatcher continues it
            headers = _outgoing(headers) or headers
        return self._pack(_REQUEST, 0, ask, "", DISPATCHER, 0, headers,
                          {"op": "lookup", "name": name})

    def _wait(self, conn: Connection, ask: int, deadline: float) -> Message:
        """The answer to request ``ask`` (REPLY or ERROR); ``Timeout`` at ``deadline``."""
        while True:
            if not conn.pending():
                # nothing queued: wait for the descriptor, which fires for the next
                # frame (posa/transport/base.py); no receive that would find nothing
                wait = deadline - _monotonic()
                if wait <= 0.0:
                    raise self._late()
                poll = self._poll
                try:
                    if not (readable(conn, wait) if poll is None
                            else poll(int(wait * 1000.0) + 1)):
                        continue
                except OSError:     # closed under us: the receive says how
                    pass
                if self.closed:
                    raise _closed()
                frame = conn.recv_nowait()
            else:
                frame = conn.recv_nowait()
            if frame is None:
                continue
            msg = self._open(frame)
            if msg is not None and msg.correlation == ask and (
                    msg.kind == _REPLY or msg.kind == _ERROR):
                return msg

    def _late(self) -> Timeout:
        return Timeout(f"the dispatcher at {self.address} did not answer a lookup in "
                       "time; is it running, or overloaded?")

    def _open(self, frame: bytes) -> Message | None:
        """The message in an answer, or None to drop it (corrupt, forged, or an
        answer to another request); raises the ``Unauthorized`` a refusal says."""
        auth = self._auth
        try:
            if auth is None:
                msg = self._codec.decode(frame)
                if msg.headers and REFUSED_HEADER in msg.headers:
                    refused = refusal_of(msg)
                    if refused is not None:
                        raise refused
                return msg
            envelope, key_id = auth.open(frame)
            msg = self._codec.decode(envelope)
            auth.check(msg, key_id)
            return msg
        except Unauthorized as exc:
            if auth is None:
                raise
            found = diagnose(frame, exc, self._codec, _NAMES, getattr(auth, "key_id", None))
            if found is not None:
                raise found[1] from None
            return None
        except ProtocolError:
            return None

    def _drop(self) -> None:
        conn, self._conn, self._poll = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except PosaError:
                pass

    def close(self) -> None:
        """Close; a lookup waiting in another thread raises ``Closed``."""
        with self._lock:
            self.closed = True
            if self._wake is not None:
                self._wake[1].close()       # the near end reads its end: the wait wakes
                if not self._busy:
                    self._unwake()
        self._drop()

    def _leave(self) -> None:
        """A lookup ends: the wake pair goes with it if the line was closed meanwhile."""
        with self._lock:
            self._busy = False
            if self.closed:
                self._unwake()

    def _unwake(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            for end in wake:
                end.close()


def _closed() -> Closed:
    return Closed("this registry client is closed")


def _watch(conn: Connection, wake: socket.socket) -> Callable[[int], list[Any]] | None:
    """How to wait for ``conn``'s answers: the poll (milliseconds) of a poll
    object watching it and ``wake``, a wait in one call with nothing looked up
    (None without poll: there a close does not cut the wait short)."""
    if _poll is None:
        return None
    poller = _poll()
    poller.register(wake.fileno(), _POLLIN)
    poller.register(conn.fileno(), _POLLIN)
    wait: Callable[[int], list[Any]] = poller.poll
    return wait


def _ttl(timeout: float) -> dict[str, Any]:
    """A lookup's headers: its time to live in milliseconds (1 at least)."""
    ttl = int(timeout * 1000)
    return {"ttl": ttl if ttl > 1 else 1}


def _backoff(deadline: float) -> float:
    """How long to wait before connecting again: a little, never past ``deadline``."""
    left = deadline - _monotonic()
    return 0.05 if left > 0.05 else (left if left > 0.0 else 0.0)


class Lines:
    """Each thread's ``LookupLine``, made on its first lookup (a client that never
    looks up holds none); ``close`` closes every thread's."""

    def __init__(self, *, codec: Codec, options: Options,
                 authenticator: Authenticator | None = None) -> None:
        self._make = (codec, options, authenticator)
        self._local = threading.local()
        self._all: list[LookupLine] = []
        self._lock = threading.Lock()
        self._fork = _forks[0]
        self.closed = False

    def line(self, address: str) -> LookupLine:
        """This thread's line to ``address``; ``Closed`` once closed."""
        if self._fork != _forks[0]:     # a forked child: the parent's lines are its own
            self._fork, self._lock, self._all = _forks[0], threading.Lock(), []
            self._local = threading.local()
        line: LookupLine | None = getattr(self._local, "line", None)
        if line is None or line.address != address or line.closed:
            if line is not None:
                line.close()
            codec, options, authenticator = self._make
            line = LookupLine(address, codec=codec, options=options,
                              authenticator=authenticator)
            with self._lock:
                if self.closed:
                    raise _closed()
                self._all.append(line)
            self._local.line = line
        return line

    def close(self) -> None:
        if self._fork != _forks[0]:     # a forked child: a thread absent here may hold
            self._fork, self._lock = _forks[0], threading.Lock()    # the parent's lock
        with self._lock:
            self.closed = True
            lines, self._all = self._all, []
        for line in lines:
            line.close()
