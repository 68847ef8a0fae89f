"""The Gatekeeper: nothing reaches a handler that has not passed it.

For each inbound frame, in order: size limit, decode, envelope validation,
authentication, authorization, rate limit.  A frame that fails any step is
dropped, counted under its reason in ``rejections``, and logged at most once per
reason per interval with a count of the others (``posa.transport.refusals``: a
flood must not become a flood of log lines, nor carry the sender's bytes).  The
caller answers a rejected request with an ERROR when it can
(``Rejection.answerable``), and a frame that failed to open (it carries
``Rejection.frame``) with the unsealed, rate-limited refusal ``refusal`` gives
(``posa.admission.unverified``), so that its sender is told instead of timing out.

Rejection reasons (the keys of ``rejections``, fixed: metrics and docs name them):

    malformed        not a posa envelope (bytes, msgpack, fields, size)
    unauthenticated  no valid authentication trailer: none, unknown key, wrong MAC
    stale            sealed outside the clock window
    replay           a frame seen before
    impersonation    the key may not speak for the sender name
    forbidden        an access rule refuses sender -> recipient
    rate-limited     the connection or the sender is over its rate
    busy             too many requests in flight (``enter``)

An ``Unauthorized`` raised by a step may carry its reason in ``.reason``
(``refusal``); without one, authentication failures count as
``unauthenticated`` and authorization failures as ``forbidden``.

With an authenticator, an admitted message carries the id of the key that
authenticated it in ``headers["posa.key"]`` (a value sent by anyone else is
removed), which ``posa.security.authenticated_key`` reads.

A ``BATCH`` frame (several envelopes of one stream) passes these steps once as a
whole; ``unbatch`` then validates each envelope inside and applies the rate limit
to each, admitting the batch up to its first refused message (the rest come again
from the sender's backlog, like any message that was not acknowledged).

The steps beyond decoding are pluggable objects (``posa.admission.authenticator``,
``posa.admission.acl``, ``posa.admission.quotas``; users configure them through
``posa.security``), each with one method; a gatekeeper without them admits
every well-formed message.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from typing import Any, Protocol

from posa.admission.quotas import InFlight, Rate
from posa.admission.unverified import ANSWER_RATE, RefusalAnswers
from posa.errors import PosaError, ProtocolError, Rejected, Unauthorized
from posa.transport.refusals import RefusalLog, clip
from posa.wire.codec import Codec, Kind, Message
from posa.wire.repeats import Repeats

__all__ = ["Gatekeeper", "Rejection", "Authenticator", "Authorizer", "Limiter", "KEY_HEADER",
           "refusal"]

log = logging.getLogger("posa.admission.gatekeeper")

KEY_HEADER = "posa.key"   # the key that authenticated an admitted message
_STREAM_0 = b"\x00"       # the fourth byte of an envelope of stream 0 (docs/protocol.md)


def refusal(reason: str, text: str, detail: str | None = None) -> Unauthorized:
    """An ``Unauthorized`` tagged with the gatekeeper counter it belongs to and,
    for a frame that failed to open, ``detail``: why (``posa.admission.unverified``
    answers the sender with a fixed text per detail)."""
    exc = Unauthorized(text)
    exc.reason = reason  # type: ignore[attr-defined]
    exc.detail = detail  # type: ignore[attr-defined]
    return exc


class Authenticator(Protocol):
    """Proves who sent a frame. Senders ``seal`` every frame; receivers ``open`` it
    (before decoding) and ``check`` the decoded message against the key that opened it."""

    def seal(self, envelope: bytes) -> bytes:
        """``envelope`` with the proof appended (the frame that goes on the wire)."""

    def open(self, frame: bytes) -> tuple[bytes, str]:
        """``(envelope, key_id)``; raises ``Unauthorized`` (unknown key, bad proof, stale)."""

    def check(self, msg: Message, key_id: str) -> None:
        """Raise ``Unauthorized`` unless ``key_id`` may speak for ``msg.sender``, or the
        message is a replay."""


class Authorizer(Protocol):
    def check(self, msg: Message) -> None:
        """Raise ``Unauthorized`` unless ``msg.sender`` may send to ``msg.recipient``."""


class Limiter(Protocol):
    def admit(self, source: Any, msg: Message) -> bool:
        """False if ``source`` or ``msg.sender`` is over its rate."""


class Rejection(Exception):
    """Why a frame was refused: ``reason`` (a counter key) and the error to answer."""

    def __init__(self, reason: str, error: PosaError, msg: Message | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.msg = msg
        # a frame that failed authentication, and why (a key of
        # ``posa.admission.unverified.CAUSES``): ``Gatekeeper.refusal`` answers it
        self.frame: bytes | None = None
        self.cause: str | None = None

    def unopened(self, frame: bytes, cause: str | None) -> Rejection:
        """This rejection, for ``frame`` that could not be opened for ``cause``."""
        self.frame, self.cause = frame, cause
        return self

    @property
    def answerable(self) -> bool:
        """True if the sender waits for a reply that should carry this error."""
        return self.msg is not None and self.msg.kind == Kind.REQUEST


class Gatekeeper:
    """Admission control for one receiving endpoint set (a peer or a service)."""

    def __init__(self, codec: Codec | None = None, *, authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None, limiter: Limiter | None = None,
                 in_flight: InFlight | None = None,
                 refusal_rate: Rate | None = ANSWER_RATE) -> None:
        self.codec = codec if codec is not None else Codec()
        self.answers = (RefusalAnswers(self.codec, refusal_rate)
                        if refusal_rate is not None else None)
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.limiter = limiter
        self.in_flight = in_flight
        self.rejections: Counter[str] = Counter()
        self._refusals = RefusalLog(log)
        self._plain = authenticator is None and authorizer is None and limiter is None
        self._repeats = Repeats(self.codec.decode).decode

    def admit(self, frame: bytes, source: Any = None) -> Message:
        """The message in ``frame`` if it may pass; raises ``Rejection`` otherwise."""
        if self._plain:
            try:        # (a stream-less request, perhaps a repeat: posa.wire.repeats)
                msg = (self._repeats(frame) if frame[3:4] == _STREAM_0
                       else self.codec.decode(frame))
            except ProtocolError as exc:    # perhaps sealed: this side has no keys
                raise self._reject("malformed", exc, None).unopened(frame, "sealed") \
                    from None
            if KEY_HEADER in msg.headers:
                del msg.headers[KEY_HEADER]
            return msg
        key_id = ""
        if self.authenticator is not None:
            try:
                frame, key_id = self.authenticator.open(frame)
            except Unauthorized as exc:
                raise self._reject(_reason(exc, "unauthenticated"), exc, None).unopened(
                    frame, getattr(exc, "detail", None)) from None
        try:
            msg = (self._repeats(frame) if frame[3:4] == _STREAM_0
                   else self.codec.decode(frame))
        except ProtocolError as exc:
            raise self._reject("malformed", exc, None) from None
        if self.authenticator is not None:
            try:
                self.authenticator.check(msg, key_id)
            except Unauthorized as exc:
                raise self._reject(_reason(exc, "unauthenticated"), exc, msg) from None
            msg.headers[KEY_HEADER] = key_id
        elif KEY_HEADER in msg.headers:
            del msg.headers[KEY_HEADER]
        if self.authorizer is not None:
            try:
                self.authorizer.check(msg)
            except Unauthorized as exc:
                raise self._reject(_reason(exc, "forbidden"), exc, msg) from None
        if self.limiter is not None and msg.kind != Kind.BATCH \
                and not self.limiter.admit(source, msg):
            raise self._reject("rate-limited", Rejected(
                f"{msg.sender!r} is sending faster than this peer admits; slow down "
                "or ask its operator to raise the rate limit"), msg)
        return msg

    def unbatch(self, batch: Message, source: Any = None) -> list[Message]:
        """The messages inside ``batch`` (a ``BATCH`` that ``admit`` let pass) that
        may pass too, in order; raises ``Rejection`` if the batch is malformed."""
        key_id = None if self._plain else batch.headers.get(KEY_HEADER)
        try:        # without a key, one sent by anyone is removed as the codec builds
            messages = self.codec.unbatch(batch, KEY_HEADER if key_id is None else None)
        except ProtocolError as exc:
            raise self._reject("malformed", exc, None) from None
        if self._plain:
            return messages
        if key_id is not None:
            for msg in messages:
                msg.headers[KEY_HEADER] = key_id
        if self.limiter is not None:
            for admitted, msg in enumerate(messages):
                if not self.limiter.admit(source, msg):
                    self._reject("rate-limited", Rejected(
                        f"{msg.sender!r} is sending faster than this peer admits; slow "
                        "down or ask its operator to raise the rate limit"), msg)
                    return messages[:admitted]
        return messages

    def refusal(self, rejection: Rejection, names: Collection[str]) -> bytes | None:
        """The unsealed refusal to send back for a frame that failed to open (sent
        to one of ``names``): unsealed or sealed with a key this side cannot check,
        or sealed while this side has no keys; if the refusal rate allows (see
        ``posa.admission.unverified``)."""
        if self.answers is None or rejection.frame is None or rejection.cause is None:
            return None
        return self.answers.answer(rejection.frame, rejection.cause, names)

    # -- requests in flight (called by the receiver after de-duplication) ------
    def enter(self, msg: Message) -> PosaError | None:
        """Count the request ``msg`` as in flight; the error to answer it with
        if too many are (counted as ``busy``), else None."""
        if self.in_flight is None or self.in_flight.enter(msg):
            return None
        error = Rejected(f"too many requests from {msg.sender!r} are in flight here "
                         f"(at most {self.in_flight.max_per_sender} per sender, "
                         f"{self.in_flight.max_total} in all); wait for replies before "
                         "sending more, or retry later")
        self._reject("busy", error, msg)
        return error

    def leave(self, msg: Message) -> None:
        """The request ``msg`` was answered."""
        if self.in_flight is not None:
            self.in_flight.leave(msg)

    def flush_log(self) -> None:
        """Log the refusals only counted so far (its peer closes: no later
        refusal will)."""
        self._refusals.flush()

    def _reject(self, reason: str, error: PosaError, msg: Message | None) -> Rejection:
        """Count and log (throttled per reason) a refusal; the ``Rejection`` to raise."""
        self.rejections[reason] += 1
        self._refusals.refused(reason, "rejected a frame (%s): %s", reason, clip(str(error)))
        return Rejection(reason, error, msg)


def _reason(exc: Unauthorized, default: str) -> str:
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else default
