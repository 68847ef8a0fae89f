"""Forwarder-Receiver: a named peer that sends to names and receives by name.

A ``Peer`` registers its name with a registry, listens on one or more addresses
(any transport), receives through the process's reactor, and sends through one
``Forwarder`` per sending thread (``posa.delivery.sender``).  It can move to
another address or transport while others keep sending to its name
(``migrate``): nothing is lost, nothing is delivered twice, every sender's
order is kept.  ``Peer`` is glue; each part it joins has its own module: the receiving side
on the reactor thread (reading, admission, ordering, delivery, answers, drain)
is ``posa.delivery.intake``.

Migration (see docs/migration.md): bind the new address; register the name
again with epoch + 1 (only the owner's credential may); the old endpoints keep
delivering and answer every sender they have seen with MOVED(address, epoch),
so forwarders switch and resend their unacknowledged tail, whose duplicates the
receiver drops; after ``grace`` seconds the old endpoints close, and a sender
that still finds one gone re-resolves the name and resends.
"""
from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from posa.admission.gatekeeper import Authenticator, Gatekeeper
from posa.delivery import inherited
from posa.delivery.budget import LONGEST, wrong_timeout
from posa.delivery.group import send_to_group
from posa.delivery.inbox import Inbox
from posa.delivery.intake import DEFERRED, Intake
from posa.delivery.receiver import Endpoint, OnRun, Receiver
from posa.delivery.sender import Sender
from posa.errors import Closed, InvalidName, PosaError, Timeout
from posa.naming.pages import registrations
from posa.naming.registration import Registry, resolver
from posa.naming.registry import LocalRegistry
from posa.naming.resolve import embedded_registry
from posa.runtime import reactor as reactor_module
from posa.runtime.leases import keeper
from posa.runtime.reactor import Reactor, Timer
from posa.transport.base import Listener, Options
from posa.wire.codec import Codec, CodecLimits, Kind, Message, error_body
from posa.wire.names import is_pattern, validate_name

__all__ = ["Peer", "DEFERRED"]


# kinds as module globals: an enum member lookup costs ~0.1 us before Python 3.12
_SEND, _REQUEST, _REPLY, _ERROR = Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.ERROR
_monotonic = time.monotonic
_ident = threading.get_ident


def _default_listen(name: str, registry: Registry) -> str:
    """In-process beside an embedded registry; else the registry's ``default_listen``
    (a LAN registry's: every interface), or loopback tcp, the fastest remote transport."""
    return f"inproc://{name}" if isinstance(registry, LocalRegistry) else getattr(
        registry, "default_listen", "tcp://127.0.0.1:0")


_REACTOR_WAIT = 1.0     # s close() waits for the reactor at least, ``linger`` spent or not


def _check_settings(window: int, linger: float) -> None:
    """``ValueError`` saying what to pass for a ``window`` or ``linger`` that means
    nothing (a window under 1 never lets a message out, and the send waits forever)."""
    if type(window) is not int or window < 1:
        raise ValueError(f"window must be a whole number >= 1 of messages in flight to "
                         f"one recipient, not {window!r}")
    if not isinstance(linger, (int, float)) or not 0 <= linger <= threading.TIMEOUT_MAX:
        raise ValueError(f"linger must be a number of seconds >= 0 that close() waits "
                         f"for acknowledgements, not {linger!r}")


class Peer:
    """A named endpoint that both forwards and receives (Forwarder-Receiver)."""

    def __init__(self, name: str, *, registry: Registry | None = None,
                 listen: str | Sequence[str] | None = None, credential: str | None = None,
                 handler: Callable[[Message], Any] | None = None,
                 lease: float = 10.0, limits: CodecLimits | None = None,
                 options: Options | None = None, inbox_size: int = 10000,
                 window: int = 1024, reactor: Reactor | None = None,
                 linger: float = 5.0, gatekeeper: Gatekeeper | None = None,
                 authenticator: Authenticator | None = None,
                 aliases: Sequence[str] = (),
                 meta: dict[str, Any] | None = None,
                 on_run: OnRun | None = None) -> None:
        self.name = validate_name(name)
        self.registry: Registry = registry if registry is not None else embedded_registry()
        self.codec = Codec(limits)
        self.authenticator = authenticator
        self.gatekeeper = gatekeeper or Gatekeeper(self.codec, authenticator=authenticator)
        seal = authenticator.seal if authenticator is not None else None
        self.options = self.codec.limits.options(options)
        self.reactor = reactor or reactor_module.default()
        self.credential = credential or secrets.token_hex(16)
        self.lease, self.meta, self.window, self.linger = lease, meta, window, linger
        _check_settings(window, linger)
        self._inbox = Inbox(inbox_size, self._later)
        self._receiver = Receiver(self.name, aliases, codec=self.codec, seal=seal,
                                  unbatch=self.gatekeeper.unbatch,
                                  rejections=self.gatekeeper.rejections)
        self.sender = Sender(self.name, resolve=resolver(self.registry), codec=self.codec,
                             options=self.options, window=window,
                             authenticator=authenticator, reactor=self.reactor)
        self._by_thread = self.sender.by_thread
        self._closed, self._pid = False, os.getpid()
        self._intake = Intake(self.name, reactor=self.reactor, options=self.options,
                              gatekeeper=self.gatekeeper, receiver=self._receiver,
                              inbox=self._inbox, handler=handler, on_run=on_run)
        self.stats = self._intake.stats         # received, expired, refused ...
        self.stats["sent"] = 0
        self._listening = self._intake.listening
        self._inbox.emptied = partial(self._listening.resume_soon, self._inbox.low)
        self._listening.current = self._listening.open(
            listen if listen is not None else _default_listen(self.name, self.registry))
        try:
            self.epoch = self.registry.register(
                self.name, self.addresses, credential=self.credential, lease=lease,
                meta=meta).epoch
        except BaseException:
            self._listening.close_all()
            raise
        self._stop_renewing = keeper().keep(self._renew, self._restore, lease / 3)
        inherited.watch(self)      # (a forked child may not receive through it)

    def _later(self, delay: float, fn: Callable[[], Any]) -> Timer | None:
        """``reactor.call_later`` for the inbox's waits; None in the reactor's thread."""
        reactor = self.reactor
        return None if reactor.in_reactor_thread() else reactor.call_later(delay, fn)

    # -- identity ------------------------------------------------------------
    @property
    def address(self) -> str:
        """Where this peer receives now (the first of ``addresses``)."""
        return self._listening.current[0].address

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address this peer receives at now."""
        return tuple(endpoint.address for endpoint in self._listening.current)

    def __repr__(self) -> str:
        return f"Peer({self.name!r} at {self.address}, epoch {self.epoch})"

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding ------------------------------------------------------------
    def send(self, name: str, body: Any = None, *, headers: dict[str, Any] | None = None,
             timeout: float = 5.0) -> int:
        """Send ``body`` to ``name`` (or to every peer matching a group pattern).

        Returns the number of recipients. Raises ``NameNotFound``, ``Timeout`` if not
        delivered in ``timeout``, ``PartialDelivery`` if some of a group were not;
        ``ValueError`` for a timeout that is no number of seconds from 0 to
        ``posa.delivery.budget.LONGEST`` (``budget.seconds``, made inline here)."""
        try:
            if not 0.0 <= timeout <= LONGEST:   # nan, negative, infinite, too large
                raise wrong_timeout(timeout, "a send's timeout")
        except TypeError:                       # not a number
            raise wrong_timeout(timeout, "a send's timeout") from None
        deadline = _monotonic() + timeout
        fwd = self._by_thread.get(_ident())     # (``Sender.forwarder``, inline)
        if fwd is None or fwd.closed:
            fwd = self.sender.forwarder()
        try:
            if "*" in name:     # a group pattern: every member is tried
                return self._send_to_group(fwd, name, body, headers, deadline)
        except TypeError:
            if type(name) is not str:
                validate_name(name)     # InvalidName saying what a name is
            raise
        with fwd.lock:      # not ``acquire(); try:``: KeyboardInterrupt between them
            fwd.send_locked(name, body, _SEND, headers, deadline)   # kept the lock
        self.stats["sent"] += 1
        return 1

    def _send_to_group(self, fwd: Any, pattern: str, body: Any,
                       headers: dict[str, Any] | None, deadline: float) -> int:
        """``send`` to every member of ``pattern`` but this peer (posa.delivery.group)."""
        members = [r.name for r in registrations(self.registry, pattern)  # page by page
                   if r.name != self.name]
        self.stats["sent"] += send_to_group(fwd, pattern, members, body, headers, deadline,
                                            not self.reactor.in_reactor_thread())
        return len(members)

    def request(self, name: str, body: Any = None, *, timeout: float = 5.0,
                headers: dict[str, Any] | None = None) -> Any:
        """Send a request to ``name`` and return the body of its reply.

        Raises ``Timeout``, ``NameNotFound``, or the error the handler raised
        (``RemoteError`` for exceptions that are not posa's)."""
        if (type(name) is not str or "*" in name) and is_pattern(name):  # (no call
            raise InvalidName(f"request goes to one peer, not to the group {name!r}; "
                              "use send() for groups")                   # for a name)
        return self.sender.forwarder().request(name, body, timeout=timeout,
                                               headers=headers).body

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything this thread sent is acknowledged by its recipients."""
        self.sender.flush(timeout)     # (its timeout checked there: budget.seconds)

    # -- receiving -------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> Message:
        """The next message for this peer; blocks up to ``timeout`` (None: forever,
        0: don't block). Raises ``Timeout`` if none came, ``Closed`` after close."""
        started, wait = _monotonic(), timeout   # (the inbox checks what it is)
        while True:
            msg = self._inbox.get(wait, self.name)
            if self._listening.paused and self._inbox.low():
                self.reactor.call_soon(self._listening.resume)
            if msg.kind != _REQUEST or not self._intake.expired(msg):
                return msg
            if timeout is not None:         # a request that expired in the inbox:
                wait = max(0.0, timeout - (_monotonic() - started))  # answered, skipped

    def serve(self, handler: Callable[[Message], Any], *,
              quick: Callable[[Message], Any] | None = None) -> None:
        """Hand every message to ``handler`` on the reactor thread from now on.

        For a REQUEST, the handler's return value is the reply, an exception it
        raises becomes an ERROR reply, and ``DEFERRED`` means it will call
        ``reply`` itself later. ``quick``, if given, takes the stream-less
        requests (stream 0) the same way, answered at once without a stream's
        bookkeeping (``posa.delivery.quick``): for a handler that answers from what
        the peer holds, making no calls of its own."""
        self._intake.handler = handler
        self._intake.quick = quick
        self.reactor.call(self._intake.deliver_queued)

    def reply(self, msg: Message, body: Any = None) -> None:
        """Answer the request ``msg``."""
        self._intake.answer(msg, _REPLY, body)

    def reply_error(self, msg: Message, exc: BaseException) -> None:
        """Answer the request ``msg`` with an error that the requester raises."""
        self._intake.answer(msg, _ERROR, error_body(exc))

    def expired(self, msg: Message) -> bool:
        """True if the request ``msg`` waited past its deadline: then it has been
        answered with ``Timeout`` (and counted); don't start it. For work queued
        outside the peer, e.g. a thread pool."""
        return self._intake.expired(msg)

    def stop_accepting(self) -> None:
        """Start draining: new requests are refused with ``Rejected`` at once, those
        in flight are answered as they finish, acknowledgements still go out (the
        first step of a clean shutdown, ``posa.ops.serve_until_signalled``)."""
        self._intake.draining = True

    def depths(self) -> dict[str, int]:
        """Queue depths, for metrics: the inbox and the messages not yet acknowledged."""
        return {"inbox": self._inbox.qsize(),
                "unacknowledged": self.sender.unacknowledged()}

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners this peer receives on now (each with its ``address`` and a
        ``rejections`` Counter, which ``posa.ops.Monitor`` exports)."""
        return tuple(endpoint.listener for endpoint in self._listening.current)

    def transport_rejections(self) -> dict[str, int]:
        """Connections the listeners dropped, by cause (garbage, oversize ...)."""
        return self._listening.rejections()

    def in_flight(self) -> int:
        """Requests handed to the application and not yet answered."""
        return self._intake.in_flight()

    def observe_requests(self, observe: Callable[[float], None] | None) -> None:
        """Call ``observe(seconds)`` with each answered request's time from its
        arrival to its answer (``posa.ops.Monitor`` feeds a histogram); None stops."""
        self._intake.observe = observe

    # -- migration -------------------------------------------------------------
    def migrate(self, listen: str, *, grace: float = 2.0) -> str:
        """Move this peer to ``listen`` (any transport) while it keeps its name.

        Returns the new address. Senders are redirected; nothing is lost."""
        if self._closed:
            raise Closed(f"peer {self.name!r} is closed")
        new = self._listening.open(listen)
        try:
            registration = self.registry.register(
                self.name, [e.address for e in new], credential=self.credential,
                epoch=self.epoch + 1, lease=self.lease, meta=self.meta)
        except BaseException:
            self._listening.close(new)
            raise
        self.epoch = registration.epoch
        # the registry's form of the address: a wildcard host (0.0.0.0) is one that
        # the senders' hosts can reach, as in their lookups
        moved_to = (registration.addresses or (new[0].address,))[0]
        for endpoint in self._listening.replace(new, grace):
            self.reactor.call_soon(self._announce_move, endpoint,
                                   (moved_to, registration.epoch))
        return new[0].address

    def _announce_move(self, old: Endpoint, moved_to: tuple[str, int]) -> None:
        self._intake.send(self._receiver.move(old, *moved_to))

    # -- liveness and shutdown ---------------------------------------------------
    def _renew(self) -> None:
        self.registry.renew(self.name, credential=self.credential)

    def _restore(self) -> None:
        self.epoch = self.registry.register(
            self.name, self.addresses, credential=self.credential,
            epoch=self.epoch, lease=self.lease, meta=self.meta).epoch

    def close(self) -> None:
        """Unregister the name, deliver what is unacknowledged (up to ``linger``
        seconds), close every endpoint. Idempotent. A reactor held by a handler
        that does not return is waited for no longer than what is left of
        ``linger`` (1 s at least); sends and requests of this peer still backing
        off end with ``Closed``.

        In a forked child, a peer made by the parent is the parent's: its name,
        lease, listeners, connections and reactor thread. Closing it there
        delivers what the child sent through it and closes the child's copies of
        the parent's descriptors (``_close_inherited``)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pid != os.getpid():
                self._close_inherited()
            else:
                self._close()
        except BaseException:
            self._closed = False    # interrupted (KeyboardInterrupt): close() again ends it
            raise

    def _close(self) -> None:
        self._listening.accepting = False   # a paused endpoint is not read again
        self._stop_renewing()
        try:
            # a newer registration (another process took the name over with the
            # owner's credential and a higher epoch) is not this peer's to remove
            if self.registry.lookup(self.name).epoch <= self.epoch:
                self.registry.unregister(self.name, credential=self.credential)
        except PosaError:
            pass
        deadline = time.monotonic() + self.linger
        self.sender.close(linger=self.linger)
        # the reactor's steps wait for what is left of ``linger`` (a second at least):
        # a reactor held by a handler that does not return holds close() no longer
        wait = max(deadline - time.monotonic(), _REACTOR_WAIT)
        try:
            self.reactor.call(self._intake.acknowledge_all, timeout=wait)
        except Timeout:     # held: what it delivers from now on is not acknowledged
            wait = 0.0
        except PosaError:
            pass
        self._listening.close_all(wait)
        self._inbox.close()
        self.gatekeeper.flush_log()     # the counts held back: no later line would say them
        if (tcp := sys.modules.get("posa.transport.tcp.writer")) is not None:
            tcp.losses.flush()          # (the process's: other peers' losses too)

    def _close_inherited(self) -> None:
        """(in a forked child) Deliver what this process sent through the peer (up
        to ``linger`` s, on its own streams), close its copies of the parent's
        descriptors, and nothing else: no unregistering (the name is the parent's,
        which still serves it), no flush of the parent's streams, no call to the
        reactor (its thread is the parent's, absent here), no lock a thread of the
        parent may have held at the fork. tcp and tls listeners are closed here (the
        child's descriptors only); those of zmq, nats and inproc were closed in the
        child at the fork itself, by their transport."""
        from posa.transport.tcp.listener import TcpListener  # (here: tcp loads lazily)
        self._listening.accepting = False
        self.sender.close(linger=self.linger)   # (the parent's forwarders: copies only)
        for endpoint in [*self._listening.current, *self._listening._retiring]:
            if isinstance(endpoint.listener, TcpListener):
                endpoint.listener.close()   # its descriptors only, see its close()
        self._inbox.close()                 # readers here get Closed
