"""Runs: the events of one publication, as they travel through a channel (pure).

A run holds consecutive seqs (or explicit ones), the events' topics (one
``topic`` when they all share it), their bodies encoded as one msgpack array
(``blob``, the bytes the publisher made) and/or decoded (``bodies``), and for
chained events the channels each passed (``vias``), and for events published
in a trace its context (``traces``). A run moves through the
channel as it came: history and the buffers of subscribers that take all of it
hold the same object, and its blob is sent to each of them without being
decoded or encoded again. Only a filter decodes the bodies (once per run, for
all filters, ``decoded``; ``compact`` drops them again), and only a subscriber
that takes part of a run gets a new run (``slice``, ``pick``) that is encoded
for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posa.channel.protocol import unpack

__all__ = ["Run"]


class Run:
    """Events that travel together: seqs ``first``, ``first + 1`` ... (or the
    explicit ``seqs``), their ``topics`` (``topic`` when they all share one),
    their bodies encoded (``blob``, a msgpack array) and/or decoded
    (``bodies``), and for chained events the channels each passed (``vias``,
    entries None when none) and where each began (``origins``: ``[incarnation,
    seq]`` at ``via[0]``, with ``vias``); ``traces``: per event, nil or the
    ``{traceparent, tracestate?}`` it was published in (None: no event has one)."""

    __slots__ = ("first", "seqs", "topics", "topic", "blob", "bodies", "vias", "origins",
                 "traces")

    def __init__(self, first: int, topics: list[str], *, blob: bytes | None = None,
                 bodies: list[Any] | None = None, seqs: list[int] | None = None,
                 vias: list[Any] | None = None, topic: str | None = None,
                 origins: list[Any] | None = None, traces: list[Any] | None = None
                 ) -> None:
        self.first = first
        self.seqs = seqs
        self.topics = topics
        self.topic = topic
        self.blob = blob
        self.bodies = bodies
        self.vias = vias
        self.origins = origins        # [incarnation, seq] at via[0], per chained event
        self.traces = traces          # {traceparent, tracestate?} or None, per event

    def __len__(self) -> int:
        return len(self.topics)

    def __repr__(self) -> str:
        return f"Run(seq {self.first}..{self.last}, {len(self)} events)"

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs is not None else self.first + len(self.topics) - 1

    def seq_list(self) -> Sequence[int]:
        return self.seqs if self.seqs is not None else \
            range(self.first, self.first + len(self.topics))

    def decoded(self) -> list[Any]:
        """The bodies, decoded from the blob and kept (the caller may drop them
        again with ``compact``)."""
        if self.bodies is None:
            self.bodies = unpack(self.blob, "run")
        return self.bodies

    def compact(self) -> None:
        """Drop the decoded bodies if the blob holds them too."""
        if self.blob is not None:
            self.bodies = None

    def body_list(self) -> list[Any]:
        """The bodies, decoded if need be, without keeping them."""
        return self.bodies if self.bodies is not None else unpack(self.blob, "run")

    def slice(self, start: int, end: int) -> Run:
        """Events ``start`` to ``end`` (this run itself when that is all of it)."""
        if start <= 0 and end >= len(self.topics):
            return self
        seqs = self.seqs[start:end] if self.seqs is not None else None
        return Run(seqs[0] if seqs else self.first + start, self.topics[start:end],
                   bodies=self.body_list()[start:end], seqs=seqs, topic=self.topic,
                   vias=self.vias[start:end] if self.vias is not None else None,
                   origins=self.origins[start:end] if self.origins is not None else None,
                   traces=_part(self.traces[start:end]) if self.traces is not None else None)

    def pick(self, indexes: list[int]) -> Run:
        """The events at ``indexes`` (ascending), as a run with explicit seqs."""
        seq_list, topics, bodies = self.seq_list(), self.topics, self.decoded()
        vias, origins, traces = self.vias, self.origins, self.traces
        return Run(seq_list[indexes[0]], [topics[i] for i in indexes],
                   bodies=[bodies[i] for i in indexes],
                   seqs=[seq_list[i] for i in indexes], topic=self.topic,
                   vias=[vias[i] for i in indexes] if vias is not None else None,
                   origins=[origins[i] for i in indexes] if origins is not None else None,
                   traces=_part([traces[i] for i in indexes]) if traces is not None else None)

    def topics_size(self) -> int:
        """About how many bytes the topics take on the wire."""
        if self.topic is not None:
            return len(self.topic) + 2
        return sum(map(len, self.topics)) + 2 * len(self.topics)

    def traces_size(self) -> int:
        """About how many bytes the traces take on the wire (0: none)."""
        if self.traces is None:
            return 0
        return sum(sum(map(len, t.values())) + 32 for t in self.traces if t) + len(self)

    def wire(self, blob: bytes) -> list[Any]:
        """The run as a delivery carries it: ``[seqs, topics, blob(, vias,
        origins(, traces))]``, with one topic str standing for all when they share
        it (vias and origins nil when only traces are there)."""
        item: list[Any] = [self.seqs if self.seqs is not None else self.first,
                self.topic if self.topic is not None else self.topics, blob]
        if self.vias is not None:
            item.append(self.vias)
            item.append(self.origins if self.origins is not None else [None] * len(self))
        if self.traces is not None:
            if self.vias is None:
                item += (None, None)
            item.append(self.traces)
        return item


def _part(traces: list[Any]) -> list[Any] | None:
    """The traces of part of a run (None when none of it has one)."""
    return traces if any(traces) else None
