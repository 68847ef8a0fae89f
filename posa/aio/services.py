"""``posa.aio.Server`` and ``posa.aio.Client``: services under asyncio, through the
same peer and the same driver of protocol steps as ``posa.aio.Peer``.

A ``Server`` is a ``posa.aio.Peer`` named ``SERVICE/srv-XXXX`` with the service
meta ``posa.Server`` registers (so ``posa.Client`` and ``posa.aio.Client`` find
it alike).  Its handler takes the request's body: a coroutine function runs on
the event loop, one task per request, so concurrent requests run concurrently
and each is answered when its task finishes; a plain function runs on posa's
reactor thread, as ``posa.Server``'s does (it must not block).

A ``Client`` wraps ``posa.Client`` and drives its call, the failover between
servers included, on the event loop through the hub (``posa.aio.hub``): any
number of tasks may call at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from posa.aio.hub import drive
from posa.aio.peer import Peer
from posa.delivery import flow
from posa.dispatch import services
from posa.errors import NameNotFound, PosaError, Timeout, TransportError
from posa.naming.registration import Registry
from posa.naming.resolve import open_registry
from posa.wire.codec import Message
from posa.wire.names import validate_name

__all__ = ["Server", "Client"]


class Server:
    """Serves ``service`` with ``handler(body) -> reply body`` (a coroutine function
    or a plain one). Create it inside a running event loop."""

    def __init__(self, service: str, handler: Callable[[Any], Any], *,
                 dispatcher: str | None = None, registry: Registry | None = None,
                 listen: str | Sequence[str] = "tcp://127.0.0.1:0", weight: int = 1,
                 name: str | None = None, lease: float = 10.0,
                 **peer_options: Any) -> None:
        self.service = validate_name(service)
        self.handler = handler
        self.registry, self._owns_registry = open_registry(registry, dispatcher,
                                                           required=True)
        addresses = [listen] if isinstance(listen, str) else list(listen)
        meta = {"service": self.service, "weight": weight,
                "transports": sorted({a.partition("://")[0] for a in addresses})}
        try:
            self.peer = Peer(name or f"{self.service}/srv-{secrets.token_hex(4)}",
                             handler=self._serve, registry=self.registry,
                             listen=addresses, lease=lease, meta=meta, **peer_options)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            raise
        self.name = self.peer.name

    def _serve(self, msg: Message) -> Any:
        return self.handler(msg.body)

    async def close(self) -> None:
        """Unregister and stop serving."""
        await self.peer.close()
        if self._owns_registry:
            await asyncio.get_running_loop().run_in_executor(None, self.registry.close)

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
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="posa-aio-client")

    async def call(self, service: str, body: Any = None, *,
                   timeout: float | None = None) -> Any:
        """Call ``service`` and return its reply body, failing over between servers
        until ``timeout``. Raises ``Timeout``, ``NameNotFound`` (no server at all)
        or the error the handler raised."""
        client = self.sync
        timeout = client.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        last: PosaError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"no server of {service!r} answered within {timeout} s "
                              f"(tried {', '.join(failed) or 'none'}): {last}")
            server = client._chosen.get(service)
            if server is None or server in failed:
                try:
                    server = await self._run(client._pick, service, list(failed))
                except NameNotFound as exc:
                    if not failed:
                        raise
                    last = exc
                    failed.clear()      # every server failed once: try them again
                    await asyncio.sleep(min(0.05, max(0.0, remaining)))
                    continue
            fwd = client.sender.forwarder()
            try:
                reply = await drive(fwd.request_steps(
                    server, body, timeout=min(remaining, client.attempt_timeout),
                    failfast=True), fwd.lock, fwd, functools.partial(flow.mark, fwd))
                return reply.body
            except (TransportError, Timeout, NameNotFound) as exc:
                last = exc
                failed.append(server)
                client._chosen.pop(service, None)
                client.sender.forget(server)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(self._worker, functools.partial(fn, *args))

    async def close(self) -> None:
        await self._run(self.sync.close)
        self._worker.shutdown(wait=False)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
