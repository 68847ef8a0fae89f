"""The tcp byte stream without sockets: greeting, frames, limits, send queue."""
from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.errors import ProtocolError
from posa.transport.framing import (
    GREETING,
    MAX_LENGTH,
    FrameDecoder,
    SendQueue,
    encode_frame,
    encode_frames,
    frame_header,
)

LIMIT = 4096
payloads = st.lists(st.binary(max_size=300), max_size=30)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode_all(pieces: list[bytes], limit: int = LIMIT) -> list[bytes]:
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    decoder.finish()
    return frames


# --------------------------------------------------------------------------- encoding

@pytest.mark.parametrize("payload, wire", [
    (b"", b"\x00\x00\x00\x00"),
    (b"a", b"\x00\x00\x00\x01a"),
    (b"x" * 300, b"\x00\x00\x01\x2c" + b"x" * 300),
])
def test_encode_frame_table(payload: bytes, wire: bytes) -> None:
    assert encode_frame(payload) == wire
    assert encode_frames([payload, payload]) == wire + wire


def test_greeting_bytes() -> None:
    assert GREETING == b"POSA\x00\x01\x00\x00"


def test_header_refuses_lengths_beyond_u32() -> None:
    assert frame_header(MAX_LENGTH) == b"\xff\xff\xff\xff"
    with pytest.raises(ProtocolError, match="at most 4294967295 bytes"):
        frame_header(MAX_LENGTH + 1)


# --------------------------------------------------------------------------- decoding

@settings(max_examples=300, deadline=None)
@given(payloads, st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_yields_the_same_frames(frames: list[bytes], cuts: list[int]) -> None:
    stream = GREETING + encode_frames(frames)
    assert decode_all(chunks(stream, cuts)) == frames


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_byte_by_byte(frames: list[bytes]) -> None:
    stream = GREETING + encode_frames(frames)
    assert decode_all([stream[i:i + 1] for i in range(len(stream))]) == frames


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=10),
       st.booleans())
def test_random_bytes_give_frames_or_protocol_error(data: bytes, cuts: list[int],
                                                    greeted: bool) -> None:
    stream = (GREETING + data) if greeted else data
    decoder = FrameDecoder(256)
    try:
        for piece in chunks(stream, cuts):
            for frame in decoder.feed(piece):
                assert isinstance(frame, bytes) and len(frame) <= 256
        decoder.finish()
    except ProtocolError:
        assert decoder.failure in ("garbage", "oversize", "truncated")
        with pytest.raises(ProtocolError):
            decoder.feed(b"more")


@settings(max_examples=200, deadline=None)
@given(payloads, st.binary(min_size=4, max_size=50),
       st.lists(st.integers(min_value=0), max_size=10))
def test_frames_before_an_oversize_prefix_are_kept(frames: list[bytes], tail: bytes,
                                                   cuts: list[int]) -> None:
    stream = GREETING + encode_frames(frames) + b"\xff\xff\xff\xff" + tail
    decoder = FrameDecoder(LIMIT)
    got: list[bytes] = []
    with pytest.raises(ProtocolError, match="over the limit of 4096"):
        for piece in chunks(stream, cuts):
            got += decoder.feed(piece)
    assert decoder.failure == "oversize"
    assert got + decoder.frames_before_failure == frames


@pytest.mark.parametrize("stream, failure, text", [
    (b"GET / HTTP/1.1\r\n", "garbage", "not a posa tcp peer: expected greeting b'POSA'"),
    (b"PO\x00", "garbage", "not a posa tcp peer"),
    (b"POSA\x00\x02\x00\x00", "garbage", "speaks posa tcp version 2"),
    (b"POSA\x00\x01\x00\x01", "garbage", "unknown flags 0x0001"),
    (GREETING + b"\x00\x00\x10\x01", "oversize", "frame of 4097 bytes, over the limit"),
])
def test_bad_streams(stream: bytes, failure: str, text: str) -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError, match=text.replace("(", r"\(")):
        decoder.feed(stream)
    assert decoder.failure == failure


@pytest.mark.parametrize("stream, what", [
    (b"POS", "greeting"),
    (GREETING + b"\x00\x00", "frame"),
    (GREETING + b"\x00\x00\x00\x05abc", "frame"),
])
def test_truncated_streams(stream: bytes, what: str) -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(stream) == []
    with pytest.raises(ProtocolError, match=f"closed in the middle of a {what}"):
        decoder.finish()
    assert decoder.failure == "truncated"


def test_clean_end_of_stream() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(GREETING + encode_frame(b"done")) == [b"done"]
    decoder.finish()
    assert decoder.failure is None and decoder.buffered == 0


def test_without_greeting() -> None:
    decoder = FrameDecoder(LIMIT, greeting=False)
    assert decoder.greeted
    assert decoder.feed(encode_frame(b"raw")) == [b"raw"]


def test_four_gib_prefix_is_refused_without_allocating() -> None:
    decoder = FrameDecoder(16 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="4294967295 bytes"):
            decoder.feed(GREETING + b"\xff\xff\xff\xff")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"refusing the prefix allocated {peak} bytes"


def test_large_frame_in_many_chunks_is_joined_once() -> None:
    payload = bytes(range(256)) * 4096          # 1 MiB
    stream = GREETING + encode_frame(payload) + encode_frame(b"next")
    decoder = FrameDecoder(2 * len(payload))
    frames: list[bytes] = []
    for start in range(0, len(stream), 65536):
        frames += decoder.feed(memoryview(stream)[start:start + 65536])
    assert frames == [payload, b"next"]


def test_feed_copies_a_reused_buffer() -> None:
    buffer = bytearray(GREETING + encode_frame(b"abc") + b"\x00\x00")
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(memoryview(buffer)) == [b"abc"]
    buffer[:] = b"\xff" * len(buffer)            # the caller reuses its buffer
    assert decoder.feed(b"\x00\x02hi") == [b"hi"]


def test_one_whole_frame_per_read_is_checked_as_any_other() -> None:
    """The read of exactly one whole frame (``feed``'s short way) keeps the
    limit, copies a reused buffer, and a failed stream stays failed."""
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(GREETING) == []
    buffer = bytearray(encode_frame(b"x" * LIMIT))
    assert decoder.feed(memoryview(buffer)) == [b"x" * LIMIT]
    buffer[:] = b"\xff" * len(buffer)
    assert decoder.feed(encode_frame(b"")) == [b""]
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.feed(encode_frame(b"x" * (LIMIT + 1)))
    assert decoder.failure == "oversize"
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(b"ok"))


def test_limit_must_fit_the_prefix() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(MAX_LENGTH + 1)
    with pytest.raises(ValueError):
        FrameDecoder(0)


# --------------------------------------------------------------------------- send queue

large_frames = st.builds(lambda size, byte: bytes([byte]) * size,
                         st.integers(min_value=65_537, max_value=70_000),
                         st.integers(min_value=0, max_value=255))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), large_frames), max_size=12),
       st.lists(st.integers(min_value=1, max_value=300_000), max_size=40))
def test_send_queue_writes_the_encoded_stream(frames: list[bytes], takes: list[int]) -> None:
    queue = SendQueue()
    for n, frame in enumerate(frames, 1):
        assert queue.push(frame) == n
    written = bytearray()
    for take in takes + [1 << 30] * (2 * len(frames) + 1):  # a socket taking what it can
        if not queue:
            break
        head = queue.head()
        sent = min(take, len(head))
        written += head[:sent]
        queue.consume(sent)
    assert not queue and len(queue) == 0
    assert bytes(written) == encode_frames(frames)


def test_send_queue_counts_entries_until_written_in_full() -> None:
    queue = SendQueue()
    queue.push(b"abc")                 # 7 bytes on the wire
    queue.push_raw(b"raw")             # 3 bytes
    assert len(queue) == 2
    assert bytes(queue.head()) == b"\x00\x00\x00\x03abcraw"
    queue.consume(6)
    assert len(queue) == 2
    queue.consume(1)
    assert len(queue) == 1
    queue.consume(3)
    assert not queue
    queue.push(b"x")
    queue.clear()
    assert not queue
