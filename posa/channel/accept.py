"""A publication turned into a run a channel may accept (pure): its topics and
bodies checked, and the events it must not accept left out — those that
already passed this channel (loops) and those it accepted already by another
path (duplicates, by origin and seq: ``posa.channel.dedup``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posa.channel.dedup import OriginSeen
from posa.channel.protocol import (
    MAX_TOPIC_LEN,
    Publication,
    check_bodies,
    check_event_topics,
    check_traces,
    check_via,
    unpack,
)
from posa.channel.run import Run
from posa.errors import Rejected

__all__ = ["Candidate", "candidate", "count_of", "note_origins"]


@dataclass
class Candidate:
    """``run``: the events to accept, numbered from the next seq; ``n``: events
    offered; ``index``: the input index of each kept event (None: all kept);
    ``looped`` and ``duplicate``: input indexes left out, and why."""

    run: Run
    n: int
    index: list[int] | None
    looped: list[int]
    duplicate: list[int]


def count_of(pub: Publication) -> int:
    """How many events a publication offers (checked). Raises ``Rejected``."""
    return _topics_of(pub)[2]


def candidate(pub: Publication, name: str, next_seq: int, seen: OriginSeen) -> Candidate:
    """The checked publication as a run. Raises ``Rejected``, accepting none of it."""
    topics, topic, n = _topics_of(pub)
    vias, origins = pub.vias, pub.origins
    traces = check_traces(pub.traces, n)
    if vias is None:
        return Candidate(Run(next_seq, topics, blob=pub.blob, bodies=pub.bodies,
                             topic=topic, traces=traces), n, None, [], [])
    if len(vias) != n or (origins is not None and len(origins) != n):
        raise Rejected("a publication needs one via (and one origin) per topic")
    checked = [check_via(v) for v in vias]
    keep: list[int] = []
    looped: list[int] = []
    duplicate: list[int] = []
    for i, via in enumerate(checked):
        if via and name in via:
            looped.append(i)
        elif via and origins is not None and _is_origin(origins[i]) and \
                not seen.is_new(via[0], origins[i][0], origins[i][1]):
            duplicate.append(i)
        else:
            keep.append(i)
    plain = checked if any(checked) else None
    if len(keep) == n:
        return Candidate(Run(next_seq, topics, blob=pub.blob, bodies=pub.bodies,
                             vias=plain, origins=origins if plain else None, topic=topic,
                             traces=traces),
                         n, None, looped, duplicate)
    bodies = pub.bodies if pub.bodies is not None else unpack(pub.blob, "publication")
    run = Run(next_seq, [topics[i] for i in keep], bodies=[bodies[i] for i in keep],
              topic=topic, vias=[checked[i] for i in keep] if plain else None,
              origins=[origins[i] for i in keep] if plain and origins is not None else None,
              traces=_kept(traces, keep))
    return Candidate(run, n, keep, looped, duplicate)


def note_origins(run: Run, count: int, seen: OriginSeen) -> None:
    """Remember the first ``count`` events of an accepted run by their origin."""
    vias, origins = run.vias, run.origins
    if vias is None or origins is None:
        return
    for i in range(count):
        via, origin = vias[i], origins[i]
        if via and _is_origin(origin):
            seen.note(via[0], origin[0], origin[1])


def _kept(traces: list[Any] | None, keep: list[int]) -> list[Any] | None:
    if traces is None:
        return None
    kept = [traces[i] for i in keep]
    return kept if any(kept) else None


def _is_origin(origin: object) -> bool:
    return isinstance(origin, (list, tuple)) and len(origin) == 2 and \
        type(origin[0]) is int and type(origin[1]) is int


def _topics_of(pub: Publication) -> tuple[list[str], str | None, int]:
    """(topics, the one topic of all or None, count) of a publication, its
    topics and bodies checked. Raises ``Rejected``."""
    topics = pub.topics
    if isinstance(topics, str):
        topic = topics
        if len(topic) > MAX_TOPIC_LEN:
            raise Rejected(f"an event's topic is longer than {MAX_TOPIC_LEN} characters")
        n = len(pub.bodies) if pub.bodies is not None else check_bodies(pub.blob, None)
        return [topic] * n, topic, n
    n = len(topics)
    check_event_topics(topics)
    if pub.bodies is not None:
        if len(pub.bodies) != n:
            raise Rejected("a publication needs one body per topic")
    else:
        check_bodies(pub.blob, n)
    return topics, None, n
