"""A batch's plain SENDs go to the handler in force for each of them: a handler that
hands the peer to another (``Peer.serve``) while a batch is being delivered leaves
the rest of that batch to the new one, as it would were each sent alone.

Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import threading
from typing import Any

import pytest

import posa
from posa import Kind, transport
from posa.wire.codec import Codec, Message

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
codec = Codec()


def test_a_handler_replaced_mid_batch_gets_none_of_the_rest() -> None:
    got: dict[str, list[Any]] = {"first": [], "second": []}
    done = threading.Event()

    def second(msg: Message) -> None:
        got["second"].append(msg.body)
        if msg.body == 4:
            done.set()

    with posa.Peer("review-intake-b", listen="tcp://127.0.0.1:0") as peer:
        def first(msg: Message) -> None:
            got["first"].append(msg.body)
            if msg.body == 4:
                done.set()
            peer.serve(second)                      # from now on: the next is second's

        peer.serve(first)
        stream = 777
        envelopes = [codec.pack(Kind.SEND, stream, seq, "review-intake-a", peer.name, 0,
                                {}, seq) for seq in range(1, 5)]
        frame = codec.pack_batch(stream, "review-intake-a", peer.name, envelopes)
        conn = transport.connect(peer.addresses[0])
        try:
            conn.send(frame)
            assert done.wait(WAIT), got
        finally:
            conn.close()
    assert got == {"first": [1], "second": [2, 3, 4]}
