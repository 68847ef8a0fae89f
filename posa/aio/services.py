"""``posa.aio.Server`` and ``posa.aio.Client``: services under asyncio, through the
same peer and the same driver of protocol steps as ``posa.aio.Peer``.

A ``Server`` is a ``posa.aio.Peer`` named ``SERVICE/srv-XXXX`` with the service
meta ``posa.Server`` registers (so ``posa.Client`` and ``posa.aio.Client`` find
it alike).  Its handler takes the request's body: a coroutine function runs on
the event loop, one task per request, so concurrent requests run concurrently
and each is answered when its task finishes; a plain function runs on worker
threads, as ``posa.Server``'s does.

A ``Client`` wraps ``posa.Client`` and drives its ``call_steps`` (the failover
between servers included) on the event loop through the hub (``posa.aio.hub``):
any number of tasks may call at once.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from posa.aio.hub import Awaited, Key, drive
from posa.aio.peer import Peer
from posa.delivery.budget import until
from posa.dispatch import services
from posa.dispatch.weights import check_weight
from posa.naming.registration import Registry
from posa.naming.resolve import open_registry
from posa.peer import DEFERRED
from posa.runtime.pools import Pool
from posa.wire.codec import Message
from posa.wire.names import validate_name

__all__ = ["Server", "Client"]


class Server:
    """Serves ``service`` with ``handler(body) -> reply body``. Create it inside a
    running event loop.

    A coroutine function runs on the loop, one task per request; a plain function
    runs on ``workers`` threads, as ``posa.Server``'s does (``workers=0``: on
    posa's reactor thread, for handlers that never block). Either way a request
    whose deadline passed before it started is answered with ``Timeout`` and not
    run, and the calls a handler makes inherit the request's time left."""

    def __init__(self, service: str, handler: Callable[[Any], Any], *,
                 dispatcher: str | None = None, registry: Registry | None = None,
                 listen: str | Sequence[str] = "tcp://127.0.0.1:0", weight: int = 1,
                 name: str | None = None, lease: float = 10.0, workers: int = 8,
                 **peer_options: Any) -> None:
        name, peer_options = self._prepare(
            service, handler, dispatcher=dispatcher, registry=registry, listen=listen,
            weight=weight, name=name, lease=lease, workers=workers, **peer_options)
        try:
            self.peer = Peer(name, handler=self._serve, **peer_options)
        except BaseException:
            self._close_sync()
            raise
        self.name = self.peer.name

    @classmethod
    async def open(cls, service: str, handler: Callable[[Any], Any],
                   **options: Any) -> Server:
        """``Server(service, handler, **options)`` without blocking the loop while
        the server's name registers (``posa.aio.Peer.open``)."""
        self = cls.__new__(cls)
        name, peer_options = self._prepare(service, handler, **options)
        try:
            self.peer = await Peer.open(name, handler=self._serve, **peer_options)
        except BaseException:
            self._close_sync()
            raise
        self.name = self.peer.name
        return self

    def _prepare(self, service: str, handler: Callable[[Any], Any], *,
                 dispatcher: str | None = None, registry: Registry | None = None,
                 listen: str | Sequence[str] = "tcp://127.0.0.1:0", weight: int = 1,
                 name: str | None = None, lease: float = 10.0, workers: int = 8,
                 **peer_options: Any) -> tuple[str, dict[str, Any]]:
        """Everything but the peer; returns its name and options."""
        self.service = validate_name(service)
        check_weight(weight)
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        self._pool = Pool(workers, thread_name_prefix=f"posa-aio-{service}") \
            if workers > 0 and not inspect.iscoroutinefunction(handler) else None
        self.registry, self._owns_registry = open_registry(registry, dispatcher,
                                                           required=True)
        addresses = [listen] if isinstance(listen, str) else list(listen)
        meta = {"service": self.service, "weight": weight,
                "transports": sorted({a.partition("://")[0] for a in addresses})}
        return (name or f"{self.service}/srv-{secrets.token_hex(4)}",
                dict(peer_options, registry=self.registry, listen=addresses, lease=lease,
                     meta=meta))

    def _serve(self, msg: Message) -> Any:
        """Reactor thread: a coroutine's result goes to the loop (``Peer``)."""
        if self._pool is None:
            return self.handler(msg.body)
        return self._pooled(msg)

    async def _pooled(self, msg: Message) -> Any:
        result = await self._loop.run_in_executor(self._pool, self._run, msg)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _run(self, msg: Message) -> Any:
        """A worker thread: the plain handler within the request's deadline."""
        if self.peer.sync.expired(msg):
            return DEFERRED     # answered with Timeout already
        with until(msg.deadline):
            return self.handler(msg.body)

    def stop_accepting(self) -> None:
        """Refuse new requests; those in flight are answered (a clean shutdown)."""
        self.peer.sync.stop_accepting()

    def in_flight(self) -> int:
        """Requests taken and not yet answered."""
        return self.peer.sync.in_flight()

    async def close(self) -> None:
        """Unregister and stop serving. In a forked child: the child's copies only
        (``posa.aio.Peer.close``); the workers, their lock and the loop are the
        parent's (the rest runs on the running loop's default executor)."""
        await self.peer.close()
        await asyncio.get_running_loop().run_in_executor(None, self._close_sync)

    def _close_sync(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._owns_registry:
            self.registry.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """``posa.Client`` for asyncio: ``await call(service, body)`` from any number of
    tasks at once. Create it inside a running event loop."""

    def __init__(self, *, dispatcher: str | None = None, registry: Registry | None = None,
                 timeout: float = 5.0, attempt_timeout: float = 1.0, **options: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self.sync = services.Client(dispatcher=dispatcher, registry=registry, timeout=timeout,
                                    attempt_timeout=attempt_timeout, **options)
        self._worker = Pool(1, thread_name_prefix="posa-aio-client")
        self._closed = False

    async def call(self, service: str, body: Any = None, *,
                   timeout: float | None = None) -> Any:
        """Call ``service`` and return its reply body, failing over between servers
        until ``timeout`` (``posa.Client.call_steps``, driven on the loop). Raises
        ``Timeout``, ``NameNotFound`` (no server at all) or the error the handler
        raised."""
        client = self.sync
        if client.channel(service).server is None:
            # the first choice asks the registry (perhaps across the network): on
            # the worker thread; the steps then find the server chosen
            await self._run(client._pick, service, ())
        fwd = client.sender.forwarder()
        awaited = Awaited()     # the hub wakes the task for its reply only

        def awaiting(key: Key) -> None:
            awaited.key = key
        return await drive(client.call_steps(service, body, timeout=timeout,
                                             awaiting=awaiting), fwd, awaited)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(self._worker, functools.partial(fn, *args))

    async def close(self) -> None:
        """Close the ``posa.Client``; idempotent. In a forked child its worker thread
        (and the pool's lock, which a parent's thread may have held at the fork) and
        the loop are the parent's: the close runs on a worker of the child's own."""
        if self._closed:
            return
        self._closed = True
        if self._worker.inherited:
            self._loop, self._worker = asyncio.get_running_loop(), self._worker.here()
        await self._run(self.sync.close)
        self._worker.shutdown(wait=False)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
