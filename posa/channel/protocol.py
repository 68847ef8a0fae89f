"""The event channel's wire protocol: one module for the channel and its clients.

Everything travels in ordinary posa messages to and from the channel's name
(docs/protocol.md, "The event channel's requests", is generated from
``CHANNEL``). To the channel, a body is a map with an ``op`` field:

    op           fields                                        answer
    publish      topics: [str] | str, bodies: BIN, vias?,      none (one-way SEND)
                 origins?, pid?, pseq?, traces?
    subscribe    topics?, filter?, policy?, buffer?, lease?,   {inc, head, first,
                 from_seq?, inc?, skip_via?                     replay_from, restarted}
    renew        -                                             {known, inc, head?, dropped?}
    unsubscribe  -                                             the subscription's counters
    stats        -                                             the channel's counters

To a subscriber, a delivery (one-way SEND)::

    {"ch": name, "inc": int, "runs": [[seqs, topics, BIN(, vias, origins(, traces))], ...],
     "gaps": [[index, count | nil, reason], ...]?, "dropped": int, "head": int}

BIN is one msgpack array of the bodies: a publisher encodes the bodies of a
batch once (``encode_chunks``, ``publish_body``) and the channel passes those
bytes on to every subscriber that takes the whole batch. ``traces`` (one per
event: nil, or the W3C ``traceparent``/``tracestate`` of the trace it was
published in) is there only when an event of the batch has one. In a run, ``seqs`` is
the first seq of consecutive ones or a list of seqs, ``topics`` a list or one
str for all. The service parses requests with ``CHANNEL.parse`` and dispatches
through ``CHANNEL.bind``; ``Subscriber`` builds its requests with
``CHANNEL.request``, so neither side drifts. A malformed request is refused
with the table's ``Rejected``, which says what to send; the values of a
subscription (prefixes, policy, buffer, filter) are then checked by
``ChannelCore.subscribe``.

Pure: no I/O. Decoding raises ``Rejected`` (input to the channel) or
``ProtocolError`` (input to a subscriber), never a msgpack error.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from posa.errors import ProtocolError, Rejected
from posa.runtime.trace import carried
from posa.wire.schema import Field, Op, OpTable

__all__ = ["CHANNEL", "POLICIES", "MAX_TOPIC_LEN", "MAX_PREFIXES", "MAX_BUFFER", "MAX_VIA",
           "SUB_LEASE", "MIN_LEASE", "MAX_LEASE", "FRAME_MARGIN",
           "Publication", "unpack", "check_bodies", "check_prefixes", "check_event_topics",
           "check_via", "check_traces", "publish_body", "publication", "parse_publish",
           "delivery_body", "parse_delivery", "encode_chunks"]

POLICIES = ("block", "drop-oldest", "drop-newest", "fail", "disconnect")
MAX_TOPIC_LEN = 255         # characters in a topic or a topic prefix
MAX_PREFIXES = 64           # topic prefixes in one subscription
MAX_BUFFER = 10_000_000     # events one subscription may buffer
MAX_VIA = 32                # channels one event may pass
SUB_LEASE = 6.0             # a subscription lives this long without a renewal
MIN_LEASE, MAX_LEASE = 0.5, 3600.0
FRAME_MARGIN = 4096         # bytes of a frame kept for the envelope around a batch

_NUMBER = (int, float)

CHANNEL = OpTable("channel", [
    Op("publish", (
        Field("topics", (list, str)),
        Field("bodies", bytes),
        Field("vias", list, None),
        Field("origins", list, None),
        Field("pid", int, None),
        Field("pseq", int, None),
        Field("traces", list, None),
    ), oneway=True, doc="publish events: `topics` (one per body, or one str for all), "
                        "`bodies` one msgpack array of the bodies, `vias` (chained "
                        "events) the channels each passed and `origins` where each "
                        "began (`[incarnation, seq]` at its first via); `pid`, `pseq`: "
                        "the publisher and its publication number, for dropping a "
                        "publication sent twice; `traces` (events published in a "
                        "trace) one per body, nil or `{traceparent, tracestate?}`; "
                        "numbered in order"),
    Op("subscribe", (
        Field("topics", list, ("",)),
        Field("filter", dict, None),
        Field("policy", str, "drop-oldest"),
        Field("buffer", int, 1000),
        Field("lease", _NUMBER, SUB_LEASE, lambda v: MIN_LEASE <= v <= MAX_LEASE,
              f"{MIN_LEASE} to {MAX_LEASE:.0f} seconds"),
        Field("from_seq", int, None),
        Field("inc", int, None),
        Field("skip_via", list, ()),
    ), doc="subscribe the sender's name: `topics` prefixes (default `[\"\"]`: every "
           "topic), a content `filter`, the buffer's `policy` (`block`, `drop-oldest` "
           "(default), `drop-newest`, `fail`, `disconnect`) and size (`buffer`, "
           "default 1000 events), the "
           "`lease` (default 6 s), a replay `from_seq` of incarnation `inc`, channels "
           "whose events to leave out (`skip_via`); replies `{inc, head, first, "
           "replay_from, restarted}`"),
    Op("renew", doc="extend the sender's subscription by its lease; replies `{known, "
                    "inc, head?, dropped?}` (`known` false: subscribe again)"),
    Op("unsubscribe", doc="end the sender's subscription; replies its counters"),
    Op("stats", doc="replies the channel's counters and every subscription's"),
])


# -- publications ----------------------------------------------------------------------
def unpack(blob: Any, what: str) -> Any:
    """Decode one msgpack value. Raises ``ProtocolError``."""
    if type(blob) is not bytes:
        raise ProtocolError(f"{what}: expected msgpack bytes, got {type(blob).__name__}")
    try:
        return msgpack.unpackb(blob)
    except Exception as exc:  # msgpack's FormatError, ExtraData, StackError, ValueError ...
        raise ProtocolError(f"{what}: not valid msgpack ({exc})") from None


def check_bodies(blob: Any, n: int | None) -> int:
    """Check, without building the values, that ``blob`` is one msgpack array
    of well-formed items (``n`` of them, if given); returns how many. Raises
    ``Rejected``."""
    if type(blob) is not bytes:
        raise Rejected("a publication's bodies must be msgpack bytes (an array)")
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1))
    unpacker.feed(blob)
    try:
        count: int = unpacker.read_array_header()
        if n is not None and count != n:
            raise Rejected("a publication needs one body per topic")
        skip = unpacker.skip
        for _ in range(count):
            skip()
    except Rejected:
        raise
    except Exception as exc:  # msgpack's OutOfData, FormatError, StackError ...
        raise Rejected(f"a publication's bodies are not valid msgpack ({exc!r:.80})") \
            from None
    if unpacker.tell() != len(blob):
        raise Rejected("a publication's bodies have bytes after the array")
    return count


def check_prefixes(topics: Any) -> tuple[str, ...]:
    """A subscription's topic prefixes, checked. Raises ``Rejected``."""
    if isinstance(topics, str) or not isinstance(topics, (list, tuple)):
        raise Rejected('topics must be a list of topic prefixes, e.g. ["link/", '
                       '"alarm/"] ([""] for every topic)')
    if not topics or len(topics) > MAX_PREFIXES:
        raise Rejected(f"give 1 to {MAX_PREFIXES} topic prefixes ([\"\"] for every topic)")
    for prefix in topics:
        if not isinstance(prefix, str) or len(prefix) > MAX_TOPIC_LEN:
            raise Rejected(f"topic prefix {prefix!r:.40} must be a str of at most "
                           f"{MAX_TOPIC_LEN} characters")
    return tuple(topics)


def check_event_topics(topics: Any) -> None:
    """Check the topics of a publication. Raises ``Rejected``."""
    if type(topics) is not list or not set(map(type, topics)) <= {str}:
        raise Rejected("a publication's topics must be a list of str")
    if topics and max(map(len, topics)) > MAX_TOPIC_LEN:
        raise Rejected(f"an event's topic is longer than {MAX_TOPIC_LEN} characters")


def check_via(via: Any) -> tuple[str, ...] | None:
    """One event's via (None when it has none), checked. Raises ``Rejected``."""
    if not via:
        return None
    if not isinstance(via, (list, tuple)) or len(via) > MAX_VIA or \
            not all(type(v) is str for v in via):
        raise Rejected(f"an event's via must list at most {MAX_VIA} channel names")
    return tuple(via)


def check_traces(traces: Any, n: int) -> list[Any] | None:
    """A publication's traces (None when no event has one): one per event, nil or a
    map whose well-formed W3C ``traceparent`` (and ``tracestate``, cut to 512
    characters) are kept; anything else in an entry becomes nil. Raises
    ``Rejected`` if ``traces`` is not a list of one entry per event."""
    if traces is None:
        return None
    if type(traces) is not list or len(traces) != n:
        raise Rejected("a publication's traces must be a list of one entry per event "
                       "(nil or {traceparent, tracestate?})")
    kept = [carried(t) if t is not None else None for t in traces]
    return kept if any(kept) else None


@dataclass
class Publication:
    """Events offered to a channel, not yet numbered: their ``topics`` (or one
    topic str for all), their bodies as a msgpack array (``blob``) or a list
    (``bodies``), for chained events the channels each passed (``vias``) and
    where each began (``origins``), and the publisher's id and publication
    number (``pid``, ``pseq``) when it gave them; ``traces``: per event, the trace
    context it was published in (nil for none), or None when none has one."""

    topics: list[str] | str
    blob: bytes | None = None
    bodies: list[Any] | None = None
    vias: list[Any] | None = None
    origins: list[Any] | None = None
    pid: int | None = None
    pseq: int | None = None
    traces: list[Any] | None = None
    entry: int | None = None      # its journal entry in the channel's store
    whole: bool = True            # False for a tail: what a channel had not taken of one

    def tail(self, start: int) -> Publication:
        """The events from ``start`` on (no longer a whole publication: no pid);
        bodies that came encoded stay so (the blob is cut, not decoded)."""
        blob = bodies = None
        if self.bodies is not None:
            bodies = self.bodies[start:]
        else:
            blob = tail_blob(self.blob, start)
        topics = self.topics if isinstance(self.topics, str) else self.topics[start:]
        return Publication(topics, blob=blob, bodies=bodies,
                           vias=self.vias[start:] if self.vias is not None else None,
                           origins=self.origins[start:] if self.origins is not None
                           else None, entry=self.entry, whole=False,
                           traces=self.traces[start:] if self.traces is not None else None)


def publish_body(topics: list[str] | str, blob: bytes, pid: int | None = None,
                 pseq: int | None = None, traces: list[Any] | None = None
                 ) -> dict[str, Any]:
    """The body of a ``publish`` (one-way): ``blob`` one msgpack array of the
    bodies, ``topics`` one per body or one str for all; ``pid``/``pseq`` name
    the publisher and number the publication; ``traces`` (left out when None)
    the trace context of each event."""
    body: dict[str, Any] = {"op": "publish", "bodies": blob, "topics": topics}
    if pid is not None:
        body["pid"], body["pseq"] = pid, pseq
    if traces is not None:
        body["traces"] = traces
    return body


def publication(fields: dict[str, Any]) -> Publication:
    """The ``Publication`` of a ``publish`` request's fields (as ``CHANNEL``
    parsed them); its events are checked by ``ChannelCore.publish``."""
    return Publication(fields["topics"], blob=fields["bodies"], vias=fields["vias"],
                       origins=fields["origins"], pid=fields["pid"], pseq=fields["pseq"],
                       traces=fields["traces"])


def parse_publish(body: Any) -> Publication:
    """A ``publish`` body -> ``Publication``. Raises ``Rejected`` (saying what
    to send) if it is not one."""
    op, fields = CHANNEL.parse(body)
    if op.name != "publish":
        raise Rejected(f"expected a channel 'publish', got {op.name!r}")
    return publication(fields)


# -- deliveries ------------------------------------------------------------------------
def delivery_body(channel: str, incarnation: int, runs: list[list[Any]],
                  gaps: list[list[Any]], dropped: int, head: int) -> dict[str, Any]:
    """A delivery to a subscriber: ``runs`` as ``Run.wire`` gives them, each
    gap ``[index, count | None, reason]`` (left out when there is none)."""
    body = {"ch": channel, "inc": incarnation, "runs": runs, "dropped": dropped,
            "head": head}
    if gaps:
        body["gaps"] = gaps
    return body


def parse_delivery(body: Any) -> tuple[int, list[list[Any]], list[list[Any]], int, int]:
    """A delivery's body -> (incarnation, runs, gaps, dropped, head). Raises
    ``ProtocolError`` if it is not one (the bodies are decoded later, by
    ``SubscriberState.accept``)."""
    try:
        inc, runs, gaps = body["inc"], body["runs"], body.get("gaps") or []
        dropped, head = body["dropped"], body["head"]
    except (TypeError, KeyError, AttributeError):
        raise ProtocolError("not a channel delivery: expected a map with inc, runs, "
                            "dropped and head") from None
    if not (type(inc) is int and type(runs) is list and type(gaps) is list
            and type(dropped) is int and type(head) is int
            and all(map(_is_run, runs)) and all(map(_is_gap, gaps))):
        raise ProtocolError("malformed channel delivery: runs must be [seqs, topics, "
                            "bodies(, vias, origins(, traces))] and gaps [index, count, "
                            "reason]")
    return inc, runs, gaps, dropped, head


def _is_run(item: Any) -> bool:
    if type(item) is not list or not 3 <= len(item) <= 6:
        return False
    seqs, topics, blob = item[0], item[1], item[2]
    return (type(blob) is bytes
            and (type(topics) is str or (type(topics) is list
                                         and set(map(type, topics)) <= {str}))
            and (type(seqs) is int or (type(seqs) is list and set(map(type, seqs)) <= {int}))
            and all(type(extra) is list or (extra is None and i < 5)
                    for i, extra in enumerate(item[3:], 3)))


def _is_gap(g: Any) -> bool:
    return type(g) is list and len(g) == 3 and type(g[0]) is int and g[0] >= 0 \
        and (g[1] is None or type(g[1]) is int) and g[2] in ("dropped", "history")


def tail_blob(blob: Any, start: int) -> bytes:
    """The msgpack array ``blob`` without its first ``start`` items, cut where
    they end (skipped, not decoded). Raises ``ProtocolError``."""
    if type(blob) is not bytes:
        raise ProtocolError(f"publication: expected msgpack bytes, got {type(blob).__name__}")
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1))
    unpacker.feed(blob)
    try:
        count: int = unpacker.read_array_header()
        skip = unpacker.skip
        for _ in range(min(start, count)):
            skip()
    except Exception as exc:  # msgpack's OutOfData, FormatError, StackError ...
        raise ProtocolError(f"publication: not valid msgpack ({exc!r:.80})") from None
    return _packer().pack_array_header(max(count - start, 0)) + blob[unpacker.tell():]


# -- encoding bodies -------------------------------------------------------------------
_packer_local = threading.local()


def _packer() -> msgpack.Packer:
    try:
        packer: msgpack.Packer = _packer_local.packer
    except AttributeError:
        packer = _packer_local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def encode_chunks(build: Callable[[int, int], Any], n: int, max_bytes: int
                  ) -> tuple[list[tuple[int, int, bytes]], list[int]]:
    """Encode items ``0..n`` as few msgpack blobs of at most ``max_bytes``.

    ``build(start, end)`` gives the value for a slice. Returns the chunks
    ``(start, end, blob)`` in order, and the indexes of items that cannot be
    encoded at all (not msgpack data, or too large alone)."""
    packer = _packer()
    chunks: list[tuple[int, int, bytes]] = []
    bad: list[int] = []
    pending = [(0, n)] if n else []
    while pending:
        start, end = pending.pop()
        try:
            blob: bytes | None = packer.pack(build(start, end))
        except (TypeError, ValueError, OverflowError):
            packer.reset()
            blob = None
        if blob is not None and len(blob) <= max_bytes:
            chunks.append((start, end, blob))
        elif end - start == 1:
            bad.append(start)
        else:
            mid = (start + end) // 2
            pending.append((mid, end))
            pending.append((start, mid))
    return chunks, bad
