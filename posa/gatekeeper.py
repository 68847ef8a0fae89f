"""The Gatekeeper: nothing reaches a handler that has not passed it.

For each inbound frame, in order: size limit, decode, envelope validation,
authentication, authorization, rate limit.  A frame that fails any step is
dropped, counted under its reason in ``rejections``, and logged once per cause
(not once per frame: a flood must not become a flood of log lines).  The
caller answers a rejected request with an ERROR when it can
(``Rejection.answerable``).

The steps beyond decoding are pluggable objects (``posa.security``), each with
one method; a gatekeeper without them admits every well-formed message.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol

from posa.errors import PosaError, ProtocolError, Rejected, Unauthorized
from posa.message import Codec, Kind, Message

__all__ = ["Gatekeeper", "Rejection", "Authenticator", "Authorizer", "Limiter"]

log = logging.getLogger("posa.gatekeeper")


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

    @property
    def answerable(self) -> bool:
        """True if the sender waits for a reply that should carry this error."""
        return self.msg is not None and self.msg.kind == Kind.REQUEST


class Gatekeeper:
    """Admission control for one receiving endpoint set (a peer or a service)."""

    def __init__(self, codec: Codec, *, authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None, limiter: Limiter | None = None) -> None:
        self.codec = codec
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.limiter = limiter
        self.rejections: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._plain = authenticator is None and authorizer is None and limiter is None

    def admit(self, frame: bytes, source: Any = None) -> Message:
        """The message in ``frame`` if it may pass; raises ``Rejection`` otherwise."""
        if self._plain:
            try:
                return self.codec.decode(frame)
            except ProtocolError as exc:
                raise self._reject("malformed", exc, None) from None
        key_id = ""
        if self.authenticator is not None:
            try:
                frame, key_id = self.authenticator.open(frame)
            except Unauthorized as exc:
                raise self._reject("unauthenticated", exc, None) from None
        try:
            msg = self.codec.decode(frame)
        except ProtocolError as exc:
            raise self._reject("malformed", exc, None) from None
        if self.authenticator is not None:
            try:
                self.authenticator.check(msg, key_id)
            except Unauthorized as exc:
                raise self._reject("unauthenticated", exc, msg) from None
        if self.authorizer is not None:
            try:
                self.authorizer.check(msg)
            except Unauthorized as exc:
                raise self._reject("forbidden", exc, msg) from None
        if self.limiter is not None and not self.limiter.admit(source, msg):
            raise self._reject("rate-limited", Rejected(
                f"{msg.sender!r} is sending faster than this peer admits; slow down "
                "or ask its operator to raise the rate limit"), msg)
        return msg

    def _reject(self, reason: str, error: PosaError, msg: Message | None) -> Rejection:
        self.rejections[reason] += 1
        cause = (reason, str(error)[:80])
        if cause not in self._logged and len(self._logged) < 1024:
            self._logged.add(cause)
            log.warning("rejected a frame (%s): %s; further ones like it are only counted",
                        reason, error)
        return Rejection(reason, error, msg)
