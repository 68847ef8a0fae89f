"""NATS transport: ``nats://HOST:PORT[,HOST:PORT...][/SUBJECT]``, frames as NATS messages.

A plugin in all but where it lives: it is registered through the entry-point group
``posa.transports`` (pyproject.toml), so ``posa.transport`` imports it only when a
``nats://`` address is first used. It speaks the NATS client protocol itself and
needs no other package (nats-py is for ``posa.NatsRegistry``).

A listener gets a subject of its own (``posa.`` and 128 random bits, or the subject
its address names) and its address lists every server given, so a peer connected to
any server of the cluster reaches it. A connection is an inbox subject of its own:
its messages carry it as reply subject, and that is the listener's route back.

Strategy
--------
- One client of posa's own per cluster per process (``link``, ``client``), its
  socket in the poller of one I/O thread per process (``loop``); the NATS protocol
  is a sans-IO codec (``protocol``). Endpoints never wait on that thread. A send
  with nothing queued ahead of it writes its frame to the socket from the sending
  thread, under a lock that every writer of that socket takes; otherwise it appends
  the frame to its connection's queue and wakes the pump at most once per burst,
  and the pump numbers, cuts (the server's ``max_payload``) and writes. A message
  is read, parsed and handed to its subscription's callback in one turn of the
  loop: the callback appends what arrives to the endpoint's ready deque and signals
  an eventfd, which is the endpoint's ``fileno()``: the reactor polls it like any
  other descriptor (``posa.transport.inproc.receiver`` is the same machinery). A
  listener attached to a reactor lends it the socket (``polling``): the reactor
  reads, parses and drains in one turn of its own, with no hand-off. A thread
  waiting for a frame on a connection (``wait_readable``) reads the socket itself
  meanwhile (``reading``): an answer is read by the thread that waits for it.
- NATS core delivers at most once; posa's streams deliver exactly once on top. The
  transport keeps its own promise, in order, whole or not at all, per connection, by
  numbering messages: a gap (a slow consumer, a server gone) ends the connection,
  as does the client losing its server, and posa resends on a new one.

    posa.transport.nats.address     the address form; fresh subjects
    posa.transport.nats.wire        message header, cutting and reassembly (sans-IO)
    posa.transport.nats.protocol    the NATS client protocol (sans-IO)
    posa.transport.nats.loop        the process's I/O thread: a poller, timers, hand-offs
    posa.transport.nats.dialing     the failover order; dialling without blocking
    posa.transport.nats.client      one socket to a server of the cluster
    posa.transport.nats.polling     the socket in the loop's poller or lent to a reactor's
    posa.transport.nats.reading     a waiting thread reads the socket itself
    posa.transport.nats.link        the shared client and the pump
    posa.transport.nats.listener    NatsListener
    posa.transport.nats.connection  NatsConnection
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from posa.transport.base import Options
from posa.transport.nats.address import fresh_subject, parse

if TYPE_CHECKING:
    from posa.transport.nats.connection import NatsConnection
    from posa.transport.nats.listener import NatsListener

__all__ = ["NatsTransport"]


class NatsTransport:
    """Serves ``nats://``: listeners are subjects, connections are inboxes."""

    schemes = ("nats",)

    def listen(self, address: str, options: Options) -> NatsListener:
        """Subscribe to the address's subject (a fresh one if it names none)."""
        from posa.transport.nats.listener import NatsListener

        parsed = parse(address)
        if parsed.subject is None:
            parsed = parsed.with_subject(fresh_subject())
        return NatsListener(parsed, options)

    def connect(self, address: str, options: Options) -> NatsConnection:
        """Connect to the listener on the address's subject."""
        from posa.errors import TransportError
        from posa.transport.nats.connection import NatsConnection

        parsed = parse(address)
        if parsed.subject is None:
            raise TransportError(f"{address!r} names no listener: a nats address to "
                                 "connect to ends in the listener's subject, e.g. "
                                 "nats://127.0.0.1:4222/posa.0123abcd (its listener.address)")
        return NatsConnection(parsed, options)
