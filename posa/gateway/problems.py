"""Errors as RFC 9457 problem details (``application/problem+json``): sans-IO.

Every error the gateway answers is a JSON object ``{"type", "title", "status",
"detail", "code"}``: ``type`` is a URI naming the kind of error
(``urn:posa:problem:name-not-found``), ``code`` posa's wire error code
(docs/protocol.md; absent for errors of HTTP itself), ``detail`` says what
happened and what to do.  The status follows the error:

=====================  ======  ===========================================
posa error             status  meaning
=====================  ======  ===========================================
NameNotFound           404     no peer has the name (or no server serves)
Timeout                504     no answer by the deadline
Unauthorized           403     posa refused the gateway's identity
(no or a wrong token)  401     the gateway refused the HTTP client
Rejected               503     the recipient refused (busy, draining, full)
InvalidName            400     a malformed name or pattern
bad input              400     a body that is not JSON, a bad parameter
StaleEpoch             409     a name registered elsewhere since
other posa errors      502     the system behind the gateway failed
=====================  ======  ===========================================
"""
from __future__ import annotations

from typing import Any

from posa.errors import (
    InvalidName,
    NameNotFound,
    PartialDelivery,
    PosaError,
    Rejected,
    StaleEpoch,
    Timeout,
    Unauthorized,
    code_of,
)

__all__ = ["CONTENT_TYPE", "TYPE_BASE", "problem", "problem_of", "BadInput", "STATUS_OF"]

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "urn:posa:problem:"


class BadInput(PosaError):
    """A request the gateway cannot use as it is (HTTP 400)."""


# most specific first
STATUS_OF: tuple[tuple[type[BaseException], int, str], ...] = (
    (NameNotFound, 404, "name-not-found"),
    (Timeout, 504, "timeout"),
    (Unauthorized, 403, "unauthorized"),
    (Rejected, 503, "rejected"),
    (InvalidName, 400, "invalid-name"),
    (BadInput, 400, "bad-input"),
    (StaleEpoch, 409, "stale-epoch"),
    (PartialDelivery, 502, "partial-delivery"),
    (PosaError, 502, "posa-error"),
)


def problem(status: int, slug: str, title: str, detail: str,
            code: int | None = None, **extra: Any) -> dict[str, Any]:
    """A problem object."""
    body: dict[str, Any] = {"type": TYPE_BASE + slug, "title": title, "status": status,
                            "detail": detail}
    if code is not None:
        body["code"] = code
    body.update(extra)
    return body


def problem_of(exc: BaseException) -> dict[str, Any]:
    """The problem object for a posa error (or any exception: 500)."""
    for kind, status, slug in STATUS_OF:
        if isinstance(exc, kind):
            code = None if isinstance(exc, BadInput) else code_of(exc)
            return problem(status, slug, type(exc).__name__, str(exc) or slug, code)
    return problem(500, "internal", "Internal Server Error",
                   "the gateway failed; its log says why")
