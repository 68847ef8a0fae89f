"""The event channel's proxies for asyncio: ``AsyncPublisher``, ``AsyncSubscriber``.

The same calls as ``Publisher`` and ``Subscriber``, awaitable, implemented
once: each wraps the blocking object and tries a call without waiting first
(``timeout=0``: ``publish`` only appends to a buffer, ``receive`` pops a ready
event), so the common case costs no thread hop and no await per event. Only a
call that would block runs on one worker thread of the wrapper's own, so it
never stalls the event loop. ``posa.aio`` offers them as ``Publisher`` and
``Subscriber``.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from posa.channel.events import Event
from posa.channel.publisher import Publisher
from posa.channel.subscriber import Subscriber
from posa.errors import Closed, Timeout
from posa.runtime.offload import Offload

__all__ = ["AsyncPublisher", "AsyncSubscriber"]


class _AsyncWrapper(Offload):
    """Runs the blocking object's calls on one worker thread of its own, only
    when they would block: the fast paths run inline."""

    def __init__(self) -> None:
        super().__init__("channel")


class AsyncPublisher(_AsyncWrapper):
    """``Publisher`` for asyncio (create it in a running loop)."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        super().__init__()
        self.sync = Publisher(channel, **kwargs)

    async def publish(self, topic: str, body: Any = None, *,
                      timeout: float | None = None) -> None:
        try:
            self.sync.publish(topic, body, timeout=0)
        except Timeout:
            await self._run(self.sync.publish, topic, body, timeout=timeout)

    async def publish_many(self, events: Iterable[tuple[str, Any]], *,
                           timeout: float | None = None) -> int:
        return await self._run(self.sync.publish_many, list(events),  # type: ignore[no-any-return]
                               timeout=timeout)

    async def flush(self, timeout: float | None = None) -> None:
        await self._run(self.sync.flush, timeout)

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSubscriber(_AsyncWrapper):
    """``Subscriber`` for asyncio (create it in a running loop); ``async for``
    iterates its events."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        super().__init__()
        self.sync = Subscriber(channel, **kwargs)

    async def receive(self, timeout: float | None = None) -> Event:
        try:
            return self.sync.receive(timeout=0)
        except Timeout:
            return await self._run(self.sync.receive, timeout)  # type: ignore[no-any-return]

    async def receive_many(self, max_events: int = 1000,
                           timeout: float | None = None) -> list[Event]:
        try:
            return self.sync.receive_many(max_events, timeout=0)
        except Timeout:
            return await self._run(  # type: ignore[no-any-return]
                self.sync.receive_many, max_events, timeout)

    def handling(self, event: Event) -> AbstractContextManager[None]:
        """``with subscriber.handling(event):`` as ``Subscriber.handling``."""
        return self.sync.handling(event)

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except Closed:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
