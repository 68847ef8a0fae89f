"""posa under asyncio: the same surface as the blocking API, every call awaitable.

Implemented once: each asyncio object wraps its blocking counterpart.

- ``request`` drives the forwarder's own request steps
  (``Forwarder.request_steps``) from the event loop: the loop thread sends, then
  waits for the connection's descriptor with ``add_reader`` and drains it without
  blocking. No thread hop and no future per message.
- ``send`` uses the loop thread's forwarder too, so sends and requests of one
  task keep one order. It returns at once unless ``window`` messages to the
  recipient are unacknowledged: then it waits (flow control) like the blocking one.
- Receiving is fed by the reactor thread into an ``asyncio.Queue``.
- ``flush`` drives the forwarder's flush steps on the loop the same way; calls
  that are rare or slow by nature (``migrate``, the closing of the peer) run on a
  worker thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from posa import peer as peer_module
from posa.channel.aio import AsyncPublisher as Publisher
from posa.channel.aio import AsyncSubscriber as Subscriber
from posa.errors import PosaError, Timeout
from posa.wire.codec import Message

__all__ = ["Peer", "Publisher", "Subscriber"]


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
        self._closed = False

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
        return self._sync.send(name, body, **kwargs)

    async def request(self, name: str, body: Any = None, *, timeout: float = 5.0,
                      headers: dict[str, Any] | None = None) -> Any:
        fwd = self._sync.sender.forwarder()
        reply = await self._drive(fwd.lock, fwd.request_steps(
            name, body, timeout=timeout, headers=headers))
        return reply.body

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything sent from the event loop is acknowledged."""
        fwd = self._sync.sender.forwarder()
        await self._drive(fwd.lock, fwd.flush_steps(time.monotonic() + timeout))

    async def _drive(self, lock: threading.Lock,
                     steps: Generator[tuple[Any, float], bool, Any]) -> Any:
        """Run a forwarder's protocol steps on the event loop (see request_steps),
        holding the forwarder's ``lock`` while a step runs, not while it waits."""
        try:
            with lock:
                conn, wait = next(steps)
            while True:
                ready = await self._readable(conn.fileno(), wait)
                with lock:
                    conn, wait = steps.send(ready)
        except StopIteration as done:
            return done.value

    async def _readable(self, fd: int, timeout: float) -> bool:
        loop = self._loop
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, True)

        def expire() -> None:
            if not ready.done():
                ready.set_result(False)
        handle = loop.call_later(timeout, expire)
        try:
            return await ready  # type: ignore[no-any-return]
        finally:
            handle.cancel()
            loop.remove_reader(fd)

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
        """Deliver what the event loop sent (up to ``linger``), then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush(self._sync.linger)
        except PosaError:
            pass  # close() goes on; what was not acknowledged is logged by the peer
        await self._run(self._sync.close)
        self._worker.shutdown(wait=False)

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
