"""ZeroMQ sockets as posa's endpoints make them: options, flags, errors, CURVE.

Socket options, set deliberately
--------------------------------
``SNDHWM``/``RCVHWM`` = ``high_water_mark``
    ZeroMQ queues up to that many frames on each side of a connection (plus
    kernel buffers) before a send blocks.
``LINGER`` = ``linger``
    after ``close()`` queued frames keep flowing from the I/O thread for at most
    that long. On ``ipc`` this is no delivery guarantee (libzmq issue #4660:
    the tail of a stream can be lost when the sender closes right after its last
    send): the layer above acknowledges before it closes.
``MAXMSGSIZE`` = ``max_frame_size``
    a peer that sends a larger frame has its connection dropped by libzmq before
    the frame is buffered. libzmq reports only a disconnect, with no cause, so
    such drops are not counted in ``rejections``; a DEALER reconnects by itself
    and the oversized frame is lost. ``send`` refuses oversized frames itself,
    so only a foreign peer (or one configured with a larger limit) hits this.
``ROUTER_MANDATORY`` = 1, ``SNDTIMEO`` = ``send_timeout`` (listener)
    a send to a route whose connection is gone raises ``TransportError``
    instead of being dropped silently; a full peer queue blocks the send for at
    most ``send_timeout`` (``Timeout``). A connection's ``send`` waits by
    polling instead, so that ``close()`` can wake it.
``HANDSHAKE_IVL`` = ``first_frame_timeout``
    a connection whose ZMTP handshake (greeting, mechanism, CURVE) has not
    finished by then is closed by libzmq (its default is 30 s): stalled and
    half-open connections give their descriptors back. Counted as
    ``"handshake-failed"`` by a listener's monitor.
``HEARTBEAT_IVL`` = 10 s, ``HEARTBEAT_TIMEOUT`` = ``HEARTBEAT_TTL`` = ``idle_timeout``
    each side pings the other every 10 s; a peer from which nothing at all
    (not even the answer to a ping) arrives for ``idle_timeout`` after a ping is
    dropped, on either side: a dead host, a stopped process, a connection
    stalled in the middle of a message. A live peer answers pings by itself
    (inside libzmq), so an idle but healthy connection stays: libzmq has no idle
    timeout. Not ``frame_timeout``: a receiver that stops reading (a full inbox)
    leaves the pings unread too (libzmq stops reading a connection whose queue
    is full), and a connection held back that way is flow control, not a fault,
    which may last minutes. ``idle_timeout`` = None turns heartbeats off.
``ZAP_DOMAIN`` = ``NULL_ZAP_DOMAIN`` (listener without CURVE)
    libzmq still speaks ZMTP 1.0 to a peer whose first byte is not 0xFF: such
    a "peer" (``GET / HTTP/1.1`` will do) passes no handshake deadline and no
    heartbeat, and holds its connection for ever. A ZAP domain makes libzmq
    refuse ZMTP 1.0 (counted as ``"handshake-garbage"``); with no ZAP handler in
    the process, NULL-mechanism peers pass as before. A process that installs a
    ZAP handler must answer ``200`` to requests of this domain. Under a ZAP
    handler (``zap.py``, or anyone's) libzmq never delivers a connection's
    first frame at ``RCVHWM`` 1, so a listener's ``RCVHWM`` is at least 2.
``IMMEDIATE`` is not set (connection)
    a connection queues up to ``high_water_mark`` frames before its listener
    answers (then ``send`` blocks for at most ``send_timeout``), and keeps the
    frames it received readable after the listener went away: with
    ``IMMEDIATE`` libzmq drops them on disconnect, which lost acknowledgements
    sent just before a receiver closed. A sender learns that nobody accepts its
    frames from the missing acknowledgements (the layer above), not from a send
    that blocks.

The flags are plain ints, and ``raw_send`` is pyzmq's compiled send: the hot
paths of the listener and the connection use them as module globals.
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import zmq

from posa.errors import Closed, TransportError
from posa.transport.base import Options
from posa.transport.zmq.context import context

__all__ = ["NOBLOCK", "SNDMORE", "RCVMORE", "EVENTS", "POLLIN", "POLLOUT", "Again",
           "ZMQError", "raw_send", "poll", "PollItems", "BIND_REASONS", "new_socket",
           "socket_error", "Curve", "HEARTBEAT", "NULL_ZAP_DOMAIN"]

HEARTBEAT = 10.0     # s between ZMTP pings on every connection
NULL_ZAP_DOMAIN = b"posa.null"   # the ZAP domain of listeners without CURVE

# plain ints: pyzmq's enum and flag types cost a microsecond per operation
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
Again = zmq.Again
ZMQError = zmq.ZMQError
# pyzmq's Socket.send is a Python wrapper (routing ids, groups, Frame objects)
# around the compiled send; frames here are plain bytes, so the hot path calls
# the compiled one directly (about 250 ns less per frame).
raw_send = zmq.backend.Socket.send

# zmq_poll items mixing a socket and a descriptor (the wake-up pipe)
PollItems = Sequence[tuple["zmq.Socket[bytes] | int", int]]
# pyzmq's hints type zmq_poll for lists of sockets only or of descriptors only,
# the latter answering descriptors; a mixed list answers each item as it was
# given (the socket object for the socket), which is what the endpoints compare.
poll = cast(Callable[[PollItems, int], list[tuple[object, int]]], zmq.zmq_poll)

BIND_REASONS = {
    errno.EADDRINUSE: "address in use; choose another port, or port 0 for a free one",
    errno.EADDRNOTAVAIL: "no local interface has that address; use one of this "
                         "host's addresses, e.g. 127.0.0.1",
    errno.ENOENT: "the directory does not exist; create it first",
    errno.EACCES: "permission denied; choose a port above 1023 or a writable directory",
    errno.EINVAL: "malformed address; write zmq+tcp://HOST:PORT or zmq+ipc:///PATH",
    errno.ENODEV: "unknown host or interface; use an IP address such as 127.0.0.1",
}


def socket_error(action: str, address: str, exc: zmq.ZMQError | OSError) -> TransportError:
    """Translate a ZeroMQ/OS error; a terminated context or closed socket is ``Closed``."""
    if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        return Closed(f"{address} is closed (or the process is exiting); open a new "
                      "endpoint to go on")
    return TransportError(f"cannot {action} {address}: {exc.strerror or exc}")


def new_socket(kind: int, options: Options, ipv6: bool) -> zmq.Socket[bytes]:
    """A socket of the process's context with the options every endpoint sets."""
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, int(options.linger * 1000))
    sock.setsockopt(zmq.SNDHWM, options.high_water_mark)
    sock.setsockopt(zmq.RCVHWM, options.high_water_mark)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_frame_size)
    sock.setsockopt(zmq.HANDSHAKE_IVL, _ms(options.first_frame_timeout))
    if options.idle_timeout is not None:
        sock.setsockopt(zmq.HEARTBEAT_IVL, _ms(HEARTBEAT))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(options.idle_timeout))
        sock.setsockopt(zmq.HEARTBEAT_TTL, min(_ms(options.idle_timeout), 6_553_500))
    if ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    return sock


def _ms(seconds: float | None) -> int:
    """A libzmq interval in whole milliseconds (0: none)."""
    return 0 if seconds is None else max(1, round(seconds * 1000))


@dataclass(frozen=True)
class Curve:
    """CURVE keys (Z85 text, as ``zmq.curve_keypair()`` makes them).

    Listeners use the server key pair; connections need only ``server_public``.
    ``clients``, beside the server's keys, is an allowlist of client public keys:
    a listener with one accepts only those clients (ZAP,
    ``posa.transport.zmq.zap``; refusals counted as ``curve-client``), and
    ``None`` accepts any.  A connection presents ``client_public`` and
    ``client_secret`` if given, else a fresh key pair of its own."""

    server_public: bytes
    server_secret: bytes | None = None
    clients: Collection[bytes] | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None

    def __post_init__(self) -> None:
        if (self.client_public is None) != (self.client_secret is None):
            raise TransportError("give both client_public and client_secret (a key pair "
                                 "from zmq.curve_keypair()), or neither")
        if self.clients is not None:
            object.__setattr__(self, "clients", frozenset(bytes(k) for k in self.clients))

    def apply(self, sock: zmq.Socket[bytes], *, listening: bool) -> None:
        """Set ``sock``'s CURVE options, as a listener's or a connection's (a
        listener with ``clients`` also calls ``zap.allow_clients``)."""
        if listening:
            sock.curve_server = True
            sock.curve_publickey = self.server_public
            sock.curve_secretkey = self.server_secret
        else:
            public, secret = ((self.client_public, self.client_secret)
                              if self.client_public is not None else zmq.curve_keypair())
            sock.curve_serverkey = self.server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
