"""The work patterns under asyncio: a worker and a slave whose work is a
coroutine on the loop, a master awaited, a pipeline awaited, items submitted
from a task."""
from __future__ import annotations

import asyncio

import pytest

import posa
import posa.aio
from posa.work.masterslave import merge_first, split_whole

pytestmark = pytest.mark.timeout(120)


def test_an_async_worker_runs_coroutine_work_on_the_loop(
        registry: posa.LocalRegistry) -> None:
    done: dict[str, object] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        seen_loops: set[int] = set()

        async def work(item: posa.Item) -> int:
            seen_loops.add(id(asyncio.get_running_loop()))
            await asyncio.sleep(0)                    # any awaitable
            return int(item.data) * 3

        with posa.WorkQueue("work/aio", registry=registry,
                            on_done=lambda k, r: done.__setitem__(k, r)) as queue:
            async with posa.aio.Peer("work/aio/producer", registry=registry) as peer:
                added = await posa.aio.submit(peer, "work/aio",
                                              {f"k{i}": i for i in range(8)})
            assert added == 8
            async with posa.aio.Worker("work/aio/w", "work/aio", work, registry=registry):
                await loop.run_in_executor(None, queue.join, 60.0)
        assert seen_loops == {id(loop)}

    asyncio.run(scenario())
    assert done == {f"k{i}": i * 3 for i in range(8)}


def test_an_async_master_and_coroutine_slaves(registry: posa.LocalRegistry) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def scenario() -> tuple[object, posa.Outcome]:
        async with posa.aio.Slave("calc/aio/1", double, registry=registry), \
                posa.aio.Slave("calc/aio/2", double, registry=registry), \
                posa.aio.Master("calc/aio/*", registry=registry, split=split_whole,
                                merge=merge_first, replicas=None,
                                vote=posa.first) as master:
            return await master.run(21), await master.execute(5)

    result, outcome = asyncio.run(scenario())
    assert result == 42 and outcome.result == 10


def _plus_one(x: int) -> int:
    return x + 1


def test_an_async_pipeline_runs_while_the_loop_goes_on(
        registry: posa.LocalRegistry) -> None:
    async def main() -> tuple[list[int], int, posa.work.pipeline.RunResult]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:         # the loop is free while the run goes on
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)
        async with posa.aio.Pipeline("pipe/aio", [{"name": "plus", "filter": _plus_one}],
                                     registry=registry) as pipeline:
            beat = asyncio.create_task(ticker())
            outputs = await pipeline.run(range(10), timeout=30)
            result = await pipeline.process({"a": 1}, timeout=30)
            done.set()
            await beat
        return outputs, ticks, result
    outputs, ticks, result = asyncio.run(main())
    assert outputs == [x + 1 for x in range(10)]
    assert result.outputs == {"a": 2}
    assert ticks > 1
