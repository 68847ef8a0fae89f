"""posa under asyncio: the same surface as the blocking API, every call awaitable.

Implemented once: each asyncio object wraps its blocking counterpart.  Sends and
requests run on one worker thread per object (so a peer's messages keep one
stream and one order); receiving is fed by the reactor thread straight into an
``asyncio.Queue``, so ``await peer.receive()`` costs no worker thread at all.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable

from posa import peer as peer_module
from posa.errors import Closed, Timeout
from posa.message import Message

__all__ = ["Peer"]


class Peer:
    """``posa.Peer`` for asyncio. Create it inside a running event loop."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"posa-aio-{name}")
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._handler: Callable[[Message], Any] | None = None
        self._sync = peer_module.Peer(name, handler=self._from_reactor, **kwargs)
        self.name = self._sync.name

    @property
    def address(self) -> str:
        return self._sync.address

    def _from_reactor(self, msg: Message) -> Any:
        handler = self._handler
        if handler is not None and not asyncio.iscoroutinefunction(handler):
            return handler(msg)
        if handler is not None:  # a coroutine handler replies when it is done
            asyncio.run_coroutine_threadsafe(self._run_handler(handler, msg), self._loop)
            return peer_module.DEFERRED
        self._loop.call_soon_threadsafe(self._queue.put_nowait, msg)
        return peer_module.DEFERRED

    async def _run_handler(self, handler: Callable[[Message], Any], msg: Message) -> None:
        try:
            result = await handler(msg)
        except Exception as exc:
            if msg.kind == 2:
                self._sync.reply_error(msg, exc)
            return
        if msg.kind == 2 and result is not peer_module.DEFERRED:
            self._sync.reply(msg, result)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run_in_executor(
            self._worker, functools.partial(fn, *args, **kwargs))

    async def send(self, name: str, body: Any = None, **kwargs: Any) -> int:
        return await self._run(self._sync.send, name, body, **kwargs)  # type: ignore[no-any-return]

    async def request(self, name: str, body: Any = None, **kwargs: Any) -> Any:
        return await self._run(self._sync.request, name, body, **kwargs)

    async def flush(self, timeout: float = 5.0) -> None:
        await self._run(self._sync.flush, timeout)

    async def receive(self, timeout: float | None = None) -> Message:
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no message for {self.name!r} within {timeout} s") from None

    def serve(self, handler: Callable[[Message], Any]) -> None:
        """Hand every message to ``handler`` (a function or a coroutine function)."""
        self._handler = handler

    def reply(self, msg: Message, body: Any = None) -> None:
        self._sync.reply(msg, body)

    def reply_error(self, msg: Message, exc: BaseException) -> None:
        self._sync.reply_error(msg, exc)

    async def migrate(self, listen: str, **kwargs: Any) -> str:
        return await self._run(self._sync.migrate, listen, **kwargs)  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._worker is None:
            return
        try:
            await self._run(self._sync.close)
        except Closed:
            pass
        self._worker.shutdown(wait=False)

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
