"""What went wrong in a TLS handshake or record, in words that say what to do.

``TlsFailure`` is an ``OSError`` (so the tcp code under ``tls://`` handles it as
a broken connection) carrying the listener's rejection counter for it;
``describe`` turns an ``ssl.SSLError`` into one.
"""
from __future__ import annotations

import errno
import ssl

__all__ = ["TlsFailure", "describe"]


class TlsFailure(OSError):
    """A TLS handshake or record failed; ``cause`` is the listener's rejection
    counter (``"garbage"``, ``"certificate"``, ``"truncated"``), or None for a
    connection that closed before saying anything."""

    def __init__(self, text: str, cause: str | None = "garbage") -> None:
        super().__init__(errno.EPROTO, text)
        self.cause = cause


def describe(exc: ssl.SSLError, side: str) -> TlsFailure:
    """A ``TlsFailure`` for ``exc`` raised on ``side`` ("listener"/"connection"/
    "record"), saying what to do about it."""
    reason = (exc.reason or "").lower().replace("_", " ")
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = str(exc.verify_message or reason)
        if side == "listener":
            return TlsFailure(f"the client certificate was refused: {text}", "certificate")
        return TlsFailure(f"the listener's certificate was refused: {text}{_hint(text)}",
                          "certificate")
    if "certificate" in reason or "unknown ca" in reason:
        return TlsFailure(f"a certificate was refused ({reason}); the listener accepts "
                          "clients whose certificate its ca signed: give one with "
                          "--tls-cert (or cert=)", "certificate")
    return TlsFailure(f"the TLS handshake or a record failed ({reason or exc}); "
                      "is the other side a posa tls:// endpoint?")


def _hint(text: str) -> str:
    text = text.lower()
    if "mismatch" in text or "not valid for" in text:
        return ("; connect by a name the certificate holds, or name one with "
                "server_hostname= in the tls settings")
    if "issuer" in text or "self-signed" in text or "self signed" in text:
        return "; its ca is not one this side trusts: give it with --tls-ca (or ca=)"
    if "expired" in text or "not yet valid" in text:
        return "; the listener's certificate is out of date: renew it"
    return ""
