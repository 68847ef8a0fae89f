"""Client-Dispatcher-Server: servers register services, clients call them by name.

A ``Server`` is a peer named ``SERVICE/srv-XXXX`` whose registration carries
``meta = {"service": SERVICE, "weight": W, "transports": [...]}``; it registers
with the dispatcher on start, renews its lease, and unregisters on close.

A ``Client`` asks the dispatcher for a server of a service once (``pick``:
round robin by weight), then talks to that server directly, and waits for a
request's answer until the call's deadline as long as the server shows it is
alive (it acknowledged the request and sends PROGRESS keep-alives while its
handler runs).  A server that is gone (connection lost, or silent for
``attempt_timeout``) or refuses (draining, over a limit) is left for another
(the dispatcher is asked to exclude it).  A server is sent a call under one
request id only, so it runs the call at most once; a call that failed over to
*another* server may have run on the first as well (gone is not necessarily
dead): handlers of services that fail over should be idempotent.
"""
from __future__ import annotations

import contextvars
import os
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from threading import TIMEOUT_MAX
from typing import Any, NoReturn

from posa.admission.gatekeeper import Authenticator
from posa.delivery.budget import bounded, until
from posa.delivery.sender import Sender
from posa.delivery.waiting import drive
from posa.dispatch.weights import check_weight
from posa.errors import Closed, NameNotFound, PosaError, Rejected, Timeout, TransportError
from posa.naming.pages import registrations
from posa.naming.registration import Registration, Registry, resolver
from posa.naming.resolve import open_registry
from posa.peer import DEFERRED, Peer
from posa.transport.base import Connection, Options
from posa.wire.codec import Message
from posa.wire.names import validate_name

__all__ = ["Server", "Client", "ServiceChannel", "SLOW_HANDLER", "WORKERS"]

SLOW_HANDLER = 0.01     # s: a handler that once took this long runs on worker threads
WORKERS = 8             # worker threads of a server not told how many


class Server:
    """Serves ``service`` with ``handler(body) -> reply body``.

    ``workers=N`` runs the handler on N threads (at most N requests at once; more
    wait, and one whose deadline passes while it waits is not run), so the
    reactor stays free to acknowledge requests and to tell requesters a slow
    handler is still working: give it to a handler that blocks or calls peers of
    its own process.  By default (None) the handler runs on the peer's reactor
    thread (no thread hop: the fastest) until one call takes ``SLOW_HANDLER`` s
    or more, then on ``WORKERS`` threads.  ``workers=0`` keeps it on the reactor
    thread: then a call longer than a client's ``attempt_timeout`` makes the
    server look gone to it."""

    def __init__(self, service: str, handler: Callable[[Any], Any], *,
                 dispatcher: str | None = None, registry: Registry | None = None,
                 listen: str | Sequence[str] = "tcp://127.0.0.1:0", weight: int = 1,
                 name: str | None = None, lease: float = 10.0, workers: int | None = None,
                 **peer_options: Any) -> None:
        self.service = validate_name(service)
        check_weight(weight)
        self.handler = handler
        self.registry, self._owns_registry = open_registry(registry, dispatcher,
                                                           required=True)
        self._pool = ThreadPoolExecutor(workers or WORKERS,
                                        thread_name_prefix=f"posa-{service}") \
            if workers != 0 else None
        self._pid = os.getpid()     # a forked child's copy of the pool is not its own
        # on the workers from the start if asked for, else once a call took SLOW_HANDLER s
        self._slow = workers is not None
        addresses = [listen] if isinstance(listen, str) else list(listen)
        meta = {"service": self.service, "weight": weight,
                "transports": sorted({a.partition("://")[0] for a in addresses})}
        self.peer = Peer(name or f"{self.service}/srv-{secrets.token_hex(4)}",
                         registry=self.registry, listen=addresses, lease=lease, meta=meta,
                         **peer_options)
        self.name = self.peer.name
        self.peer.serve(self._serve)

    def _serve(self, msg: Message) -> Any:
        if self._pool is None or not self._slow:
            started = time.monotonic()
            try:
                return self.handler(msg.body)
            finally:
                self._slow = time.monotonic() - started >= SLOW_HANDLER
        self._pool.submit(contextvars.copy_context().run, self._run, msg)   # (a trace's)
        return DEFERRED

    def _run(self, msg: Message) -> None:
        if self.peer.expired(msg):
            return
        try:
            with until(msg.deadline):
                result = self.handler(msg.body)
        except Exception as exc:
            self.peer.reply_error(msg, exc)
        else:
            self.peer.reply(msg, result)

    def stop_accepting(self) -> None:
        """Refuse new requests; those in flight are answered (a clean shutdown)."""
        self.peer.stop_accepting()

    def in_flight(self) -> int:
        """Requests taken and not yet answered."""
        return self.peer.in_flight()

    def close(self) -> None:
        """Unregister and stop serving. In a forked child the worker threads (and
        the pool's lock, which a thread of the parent submitting a call may have
        held at the fork) are the parent's: the pool is left to the parent."""
        self.peer.close()
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=True)
        if self._owns_registry:
            self.registry.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Calls services by name through a dispatcher, failing over between servers."""

    def __init__(self, *, dispatcher: str | None = None, registry: Registry | None = None,
                 timeout: float = 5.0, attempt_timeout: float = 1.0,
                 authenticator: Authenticator | None = None) -> None:
        for label, seconds in (("timeout", timeout), ("attempt_timeout", attempt_timeout)):
            if not isinstance(seconds, (int, float)) or not 0 < seconds < TIMEOUT_MAX:
                raise ValueError(f"Client's {label} must be a number of seconds > 0, not "
                                 f"{seconds!r}")
        self.registry, self._owns_registry = open_registry(registry, dispatcher,
                                                           required=True)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        # a send to a vanished server must not block longer than one attempt
        self.sender = Sender("", resolve=resolver(self.registry), authenticator=authenticator,
                             options=Options(send_timeout=attempt_timeout))
        self._chosen: dict[str, str] = {}       # service -> server name in use

    def servers(self, service: str) -> list[Registration]:
        """Every live server of ``service`` with its addresses (client-managed
        communication: connect to one yourself), read from the registry page by page."""
        return [r for r in registrations(self.registry, f"{service}/**")
                if r.meta.get("service") == service]

    def call(self, service: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``service`` and return its reply body, failing over between servers
        until ``timeout``. Raises ``Timeout``, ``NameNotFound`` (no server at all) or
        the error the handler raised."""
        return drive(self.sender.forwarder().lock,
                     self.call_steps(service, body, timeout=timeout))

    def call_steps(self, service: str, body: Any = None, *, timeout: float | None = None,
                   awaiting: Callable[[tuple[str, int]], None] = lambda key: None
                   ) -> Generator[tuple[Connection | None, float], bool, Any]:
        """``call`` as protocol steps (``posa.delivery.waiting``), driven by ``call``
        and ``posa.aio.Client``. ``awaiting`` is told the key ``(server, id)`` of
        the reply the waits that follow are for (a driver wakes the steps for it).

        A request goes to one server and is waited for until the call's deadline
        while that server shows it is alive: it acknowledged the request and
        sends keep-alives while its handler runs, however long that takes.  A
        server gone (its connection lost, or silent for ``attempt_timeout`` s)
        or refusing (draining, over a limit) is left for another; a server
        asked is never sent the request again under another id: it runs it at
        most once. A close of the client from another thread ends it: ``Closed``."""
        fwd = self.sender.forwarder()
        timeout = bounded(self.timeout if timeout is None else timeout)
        deadline = time.monotonic() + timeout
        sent: dict[str, int] = {}           # server -> the id it was sent under
        failed: list[str] = []
        last: PosaError | None = None
        while True:
            if time.monotonic() >= deadline:
                raise Timeout(f"no server of {service!r} answered within {timeout:g} s "
                              f"(tried {', '.join(failed) or 'none'}): {last}")
            try:
                server = self._server(service, failed)
            except NameNotFound as exc:
                if not failed and not sent:
                    raise
                last = exc
                failed.clear()      # every server failed once: ask them again
                yield None, min(0.05, max(0.0, deadline - time.monotonic()))
                continue
            try:
                seq = sent.get(server)
                if seq is None:
                    seq = sent[server] = fwd.send_request(
                        server, body, deadline, send_within=self.attempt_timeout)
                awaiting((server, seq))
                reply: Message = yield from fwd.reply_steps(
                    server, seq, deadline, failfast=True, stall=self.attempt_timeout)
                return reply.body
            except (TransportError, NameNotFound, Rejected, Timeout) as exc:
                if fwd.closed:      # (by another thread): no server is left to ask
                    _closed_during(service, exc)
                last = exc      # (a Timeout here: the send gave up within the attempt)
            if not fwd.knows(server):   # the request was given up with the connection
                sent.pop(server, None)
            failed.append(server)
            self._chosen.pop(service, None)

    def _server(self, service: str, failed: list[str]) -> str:
        """The server to ask: the one in use, else another (not one that failed in
        this call). Raises ``NameNotFound`` if there is none."""
        server = self._chosen.get(service)
        if server is not None and server not in failed:
            return server
        return self._pick(service, failed)

    def _pick(self, service: str, exclude: Sequence[str]) -> str:
        pick = getattr(self.registry, "pick", None)
        if pick is not None:
            picked: Registration = pick(service, exclude=exclude)
            name = picked.name
        else:  # a registry without service lookup: choose among the live servers
            servers = [r.name for r in self.servers(service) if r.name not in exclude]
            if not servers:
                raise NameNotFound(f"no live server provides {service!r}")
            name = servers[int(time.monotonic() * 1000) % len(servers)]
        self._chosen[service] = name
        return name

    def channel(self, service: str) -> ServiceChannel:
        """A handle for repeated calls to ``service``."""
        return ServiceChannel(self, service)

    def close(self) -> None:
        self.sender.close()
        if self._owns_registry:
            self.registry.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed_during(service: str, exc: PosaError) -> NoReturn:
    """Raise the ``Closed`` of a call whose client was closed meanwhile: ``exc``
    if it is one (a request cut by the close), else one caused by it."""
    if isinstance(exc, Closed):
        raise exc
    raise Closed(f"the client was closed while calling {service!r}") from exc


class ServiceChannel:
    """Repeated calls to one service, through the server the dispatcher handed out."""

    def __init__(self, client: Client, service: str) -> None:
        self.client = client
        self.service = validate_name(service)

    def call(self, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.client.call(self.service, body, timeout=timeout)

    @property
    def server(self) -> str | None:
        """The server in use now (None before the first call)."""
        return self.client._chosen.get(self.service)
