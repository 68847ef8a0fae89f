"""Frames that fail authentication: what the refusing side answers, and what the
requesting side makes of an answer it cannot verify.

Without this, an authentication failure is silent on both sides: a receiver
drops a frame it cannot verify, and its sender waits out its deadline with
nothing to tell its user but ``Timeout``.  So:

- **The refusing side answers** (``RefusalAnswers``): a SEND, REQUEST or BATCH
  refused because it is unsealed, sealed with a key the receiver does not hold,
  carries a wrong MAC or a stale time — or is sealed while the receiver runs
  without keys — addressed to one of the receiver's own names, gets an ERROR
  ``Unauthorized`` with the header ``refused`` (the cause).
  It is *unsealed* (the receiver cannot know which key the sender could check),
  its text is fixed per cause and names only the receiver (never a byte of the
  refused frame: no key id, no sender), its ``recipient`` is ``""`` and its
  ``correlation`` the refused message's ``id`` (so a request gets it as its
  answer).  Answers are rate-limited by one token bucket per receiver (default
  10 a second, 20 at once): the refused frame is decoded, without trust, only
  when a token is left, so a flood of garbage costs no more than before and
  gets a bounded number of answers.  Beyond the bucket, frames are dropped
  unanswered (their senders see ``Timeout`` as before).
- **The requesting side reads it** (``diagnose``): an answer (REPLY, ERROR,
  ACK, PROGRESS, MOVED) from a name it is talking to that it cannot verify is
  decoded without trust, only to say why: a refusal (``refused`` header), an
  unsealed answer (the far side runs without keys), a key this process does
  not hold ("no key for 'posa/dispatcher': set POSA_KEYS to a keys file that
  has it"), a wrong secret, a stale clock.  The caller raises that
  ``Unauthorized`` at once instead of waiting out its deadline.  Nothing else of
  the frame is used: an unverified REPLY is never returned as an answer.

Trusting an unsealed refusal lets whoever can inject frames into a connection
make its requests fail at once; such an attacker can already drop them (see
docs/security.md, threat model).  Replays (a valid MAC seen twice) are not
diagnosed: they are dropped as before.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection

from posa.admission.quotas import Rate, _Buckets
from posa.errors import CODE_OF, PosaError, Unauthorized
from posa.wire.codec import Codec, Kind, Message, error_fields

__all__ = ["RefusalAnswers", "diagnose", "refusal_of", "peek", "REFUSED_HEADER",
           "ANSWER_RATE", "CAUSES"]

REFUSED_HEADER = "refused"      # on an unsealed refusal: its cause (one of CAUSES)
ANSWER_RATE = Rate(10, 20)      # refusal answers per receiver: 10/s, 20 at once
_UNAUTHORIZED = CODE_OF[Unauthorized]
_REFUSABLE = (Kind.SEND, Kind.REQUEST, Kind.BATCH)
_ANSWERS = (Kind.REPLY, Kind.ERROR, Kind.ACK, Kind.PROGRESS, Kind.MOVED)
_MAC, _FIXED = 32, 50           # the trailer's MAC size, and its size besides the key id

# the text answered for each cause: fixed, naming only the refusing name
CAUSES = {
    "unsealed": "{name!r} runs with keys and refuses unsealed frames: give this "
                "process a key file (POSA_KEYS or --keys) with a key {name!r} holds",
    "unknown-key": "{name!r} does not hold the key this frame was sealed with: add "
                   "that key to its key file, or seal with a key it holds (--key-id)",
    "bad-mac": "the MAC of this frame is wrong for its key at {name!r}: the frame was "
               "altered, or the two sides hold different secrets under that key id",
    "stale": "this frame's time is outside {name!r}'s clock window: synchronise the "
             "clocks (NTP)",
    "sealed": "{name!r} runs without keys and cannot open sealed frames: run this side "
              "without keys (unset POSA_KEYS), or give {name!r} its key file (--keys)",
}


def peek(frame: bytes, codec: Codec) -> tuple[Message, str | None] | None:
    """The envelope in ``frame``, decoded *without trust*, and the key id its
    trailer names (None if it carries none); None if it holds no envelope."""
    size = len(frame)
    id_end = size - _FIXED
    if id_end >= 2 and frame[size - _MAC - 1] == 1:        # looks sealed
        start = id_end - frame[id_end]
        if 1 <= start < id_end:
            try:
                key_id = bytes(frame[start:id_end]).decode("utf-8", "replace")
                return codec.decode(frame[:start]), key_id
            except PosaError:
                pass
    try:
        return codec.decode(frame), None
    except PosaError:
        return None


class RefusalAnswers:
    """The unsealed ERRORs a receiver answers refused frames with, rate-limited.

    ``answer`` runs on the receiving thread only (no lock); ``sent`` and
    ``suppressed`` count the answers given and withheld by the rate."""

    def __init__(self, codec: Codec, rate: Rate = ANSWER_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._codec = codec
        self._bucket = _Buckets(rate, 1)
        self._clock = clock
        self.sent = 0
        self.suppressed = 0

    def answer(self, frame: bytes, cause: str, names: Collection[str]) -> bytes | None:
        """The refusal to send back for ``frame`` (refused for ``cause``, one of
        ``CAUSES``) if it was addressed to one of ``names`` and the rate allows."""
        template = CAUSES.get(cause)
        if template is None:
            return None
        tokens = self._bucket.tokens(None, self._clock())
        if tokens[0] < 1.0:
            self.suppressed += 1
            return None
        tokens[0] -= 1.0            # decoding is what the bucket bounds
        peeked = peek(frame, self._codec)
        if peeked is None or (cause == "sealed" and peeked[1] is None):
            return None     # garbage; or, to a side without keys, a frame not sealed
        msg = peeked[0]
        if msg.kind not in _REFUSABLE or msg.recipient not in names:
            return None
        name = msg.recipient        # one of ours: no byte of the refused frame is echoed
        self.sent += 1
        return self._codec.encode(Message(
            Kind.ERROR, name, "", [_UNAUTHORIZED, "Unauthorized", template.format(name=name)],
            correlation=msg.id, headers={REFUSED_HEADER: cause}))


def refusal_of(msg: Message) -> Unauthorized | None:
    """The error an ERROR ``msg`` carries if it is a refusal (``refused`` header)."""
    if msg.kind != Kind.ERROR or REFUSED_HEADER not in msg.headers:
        return None
    code, _, text = error_fields(msg.body)
    if code != _UNAUTHORIZED:
        return None
    return Unauthorized(f"refused: {_printable(text)}")


def diagnose(frame: bytes, exc: PosaError, codec: Codec, names: Collection[str],
             sealing_key: str | None) -> tuple[str, Unauthorized] | None:
    """Why an answer in ``frame`` that failed verification with ``exc`` cannot be
    taken: ``(sender, Unauthorized)`` if it is an answer from one of ``names`` (the
    names this side talks to), else None (dropped, as any forged frame)."""
    detail = getattr(exc, "detail", None) or getattr(exc, "reason", None)
    if detail not in (*CAUSES, "impersonation"):
        return None         # a replay, or garbage: nothing to say
    peeked = peek(frame, codec)
    if peeked is None or peeked[0].kind not in _ANSWERS or peeked[0].sender not in names:
        return None
    msg, key_id = peeked
    name = msg.sender
    refused = refusal_of(msg) if key_id is None else None
    if refused is not None:
        mine = f" (this process seals with key {sealing_key!r})" if sealing_key else ""
        return name, Unauthorized(f"{refused}{mine}")
    if key_id is None:
        return name, Unauthorized(
            f"{name!r} answers unsealed: it runs without keys, so its answers cannot be "
            "checked; give it keys (POSA_KEYS or --keys) or run this side without them")
    return name, Unauthorized(_unverified(name, key_id, str(detail), str(exc)))


def _unverified(name: str, key_id: str, detail: str, why: str) -> str:
    shown = _printable(key_id)
    via = "" if shown == name else f" (its answers are sealed with key {shown!r})"
    if detail in ("unknown-key", "unsealed"):
        return (f"no key for {name!r}{via}: set POSA_KEYS to a keys file that has it "
                "(or pass --keys FILE)")
    if detail == "bad-mac":
        return (f"the answers of {name!r} fail verification with key {shown!r}: this "
                "process holds another secret under that id; copy the key line from "
                f"the key file {name!r} uses")
    if detail == "stale":
        return f"the answers of {name!r} are stamped outside the clock window: {why}"
    return (f"{name!r} answers with key {shown!r}, which may not speak for it: give "
            f"{name!r} its own key (or its realm's)")


def _printable(text: str, limit: int = 200) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
