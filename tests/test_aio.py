"""posa.aio: the same surface, awaitable."""
from __future__ import annotations

import asyncio

import pytest

import posa
import posa.aio


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"])
def test_request_send_receive_and_flush(listen: str) -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/server", registry=reg, listen=listen)
            server.serve(lambda m: {"twice": m.body * 2})
            try:
                async with posa.aio.Peer("aio/client", registry=reg, listen=listen) as c:
                    assert [await c.request("aio/server", i) for i in range(50)] == [
                        {"twice": 2 * i} for i in range(50)]
                    server.serve(lambda m: None)
                    for i in range(300):
                        await c.send("aio/server", i)
                    await c.flush(5)
                    server.send("aio/client", "back")
                    assert (await c.receive(timeout=5)).body == "back"
                    with pytest.raises(posa.Timeout):
                        await c.receive(timeout=0.05)
            finally:
                server.close()
    run(main())


def test_coroutine_handlers_reply_and_errors_cross() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            async with posa.aio.Peer("aio/svc", registry=reg) as svc, \
                       posa.aio.Peer("aio/user", registry=reg) as user:
                async def handler(msg: posa.Message) -> object:
                    await asyncio.sleep(0)
                    if msg.body == "bad":
                        raise posa.Rejected("no bad requests")
                    return msg.body.upper()
                svc.serve(handler)
                assert await user.request("aio/svc", "hello", timeout=5) == "HELLO"
                with pytest.raises(posa.Rejected, match="no bad requests"):
                    await user.request("aio/svc", "bad", timeout=5)
                with pytest.raises(posa.Timeout):
                    svc.serve(lambda m: posa.DEFERRED)
                    await user.request("aio/svc", "never", timeout=0.2)
    run(main())
