"""The work patterns under asyncio: ``AsyncWorker``, ``AsyncSlave``, ``AsyncMaster``,
``AsyncPipeline``, ``submit_async`` and ``gather_async``.

The same approach as the event channel's (``posa.channel.aio``): each wraps the
blocking object, whose threads do the waiting, and a call that would block the
loop (closing, a whole job) runs on a worker thread of the wrapper's own. A
``work`` given as a coroutine function runs on the event loop: the worker's or
slave's thread hands each item to the loop and waits for its result, so the
work may await anything the loop serves (a ``posa.aio.Peer``, a database
driver). ``submit_async`` and ``gather_async`` send through a
``posa.aio.Peer``: their requests are driven by the loop itself.

``AsyncPipeline`` awaits a whole run (its stages' instances are threads, as
with ``Pipeline``). ``WorkQueue`` itself has no asyncio face: a queue manager
runs on posa's reactor and is not called per item; create it as it is.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from posa.runtime.offload import Offload
from posa.work.client import submit_steps
from posa.work.gather import AsyncRequester, gather_async
from posa.work.masterslave import Master, Outcome
from posa.work.pipeline import Pipeline, RunResult
from posa.work.slave import Slave
from posa.work.worker import Worker

__all__ = ["AsyncWorker", "AsyncSlave", "AsyncMaster", "AsyncPipeline", "submit_async",
           "gather_async"]


def on_loop(work: Callable[[Any], Any], loop: asyncio.AbstractEventLoop
            ) -> Callable[[Any], Any]:
    """``work`` for a worker thread: a coroutine function runs on ``loop``."""
    if not inspect.iscoroutinefunction(work):
        return work

    def run(value: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work(value), loop).result()
    return run


class _Wrapper(Offload):
    def __init__(self) -> None:
        super().__init__("work")


class AsyncWorker(_Wrapper):
    """``posa.Worker`` for asyncio; ``work`` may be a coroutine function."""

    def __init__(self, name: str, queue: str, work: Callable[[Any], Any],
                 **kwargs: Any) -> None:
        super().__init__()
        self.sync = Worker(name, queue, on_loop(work, self._loop), **kwargs)

    def start(self) -> AsyncWorker:
        self.sync.start()
        return self

    def in_flight(self) -> int:
        return self.sync.in_flight()

    async def close(self, timeout: float = 10.0) -> None:
        await self._shutdown(functools.partial(self.sync.close, timeout))

    async def __aenter__(self) -> AsyncWorker:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSlave(_Wrapper):
    """``posa.Slave`` for asyncio; ``work`` may be a coroutine function."""

    def __init__(self, name: str, work: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__()
        self.sync = Slave(name, on_loop(work, self._loop), **kwargs)
        self.name = self.sync.name

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncSlave:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncMaster(_Wrapper):
    """``posa.Master`` for asyncio: ``await run(job)``; jobs queue up as with
    the blocking master (one at a time)."""

    def __init__(self, slaves: Any = "work/*", **kwargs: Any) -> None:
        super().__init__()
        self.sync = Master(slaves, **kwargs)

    async def run(self, job: Any, *, timeout: float | None = None) -> Any:
        return await self._run(self.sync.run, job, timeout=timeout)

    async def execute(self, job: Any, *, timeout: float | None = None,
                      partial: bool = False) -> Outcome:
        outcome: Outcome = await self._run(self.sync.execute, job, timeout=timeout,
                                           partial=partial)
        return outcome

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncMaster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncPipeline(_Wrapper):
    """``posa.Pipeline`` for asyncio: ``await run(items)`` or ``await process(pairs)``;
    runs queue up (one at a time), the loop goes on meanwhile."""

    def __init__(self, name: str, stages: Any, **kwargs: Any) -> None:
        super().__init__()
        self.sync = Pipeline(name, stages, **kwargs)
        self.name = name

    async def run(self, items: Iterable[Any], *, timeout: float = 60.0) -> list[Any]:
        outputs: list[Any] = await self._run(self.sync.run, list(items), timeout=timeout)
        return outputs

    async def process(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *,
                      timeout: float = 60.0) -> RunResult:
        pairs = dict(items) if isinstance(items, Mapping) else list(items)
        result: RunResult = await self._run(self.sync.process, pairs, timeout=timeout)
        return result

    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.sync.metrics()

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def submit_async(peer: AsyncRequester, queue: str,
                       items: Mapping[str, Any] | Iterable[tuple[str, Any]], *,
                       timeout: float = 30.0, batch: int = 500) -> int:
    """``posa.submit`` from a ``posa.aio.Peer``: returns how many items were new;
    waits (as a task) while the queue is full; ``Timeout`` past ``timeout``."""
    steps = submit_steps(queue, items, timeout=timeout, batch=batch)
    try:
        step = next(steps)
        while True:
            if isinstance(step, float):
                await asyncio.sleep(step)
                step = steps.send(None)
            else:
                step = steps.send(await peer.request(queue, step[0], timeout=step[1]))
    except StopIteration as done:
        added: int = done.value
        return added
