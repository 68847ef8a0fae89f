"""A sender whose TLS verification fails is told why, not only that time ran out.

A client that trusts the wrong CA (``POSA_TLS_CA`` naming another CA than the one
that signed the listener's certificate) is refused at every handshake. posa
retries until the deadline (a listener restarted with the right certificate, or a
CA file put right, is reached by then), and the ``Timeout`` at the deadline names
the last failure: "the listener's certificate was refused ... give it with
--tls-ca". A ``flush`` said only that the messages "were not acknowledged in
time; the peer may be overloaded or gone". Certificates are made with ``trustme``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

trustme = pytest.importorskip("trustme")

import posa  # noqa: E402
from tests import support  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CAUSE = r"the listener's certificate was refused: .*give it with --tls-ca"


@pytest.fixture
def wrong_ca(tmp_path: Path) -> Iterator[tuple[posa.Peer, posa.Peer]]:
    """A tls:// server, and a client that trusts another CA than the server's."""
    with support.wrong_ca(tmp_path, "tlscause") as peers:
        yield peers


TRIES = 8     # where the deadline falls (a back-off, a wait for input) varies:
# every try must name the cause, whichever wait the deadline ended


def test_a_flush_to_a_listener_whose_certificate_does_not_verify_names_the_cause(
        wrong_ca: tuple[posa.Peer, posa.Peer]) -> None:
    _, client = wrong_ca
    for _ in range(TRIES):
        client.send("tlscause/server", "never", timeout=0.5)    # taken into its stream
        with pytest.raises(posa.Timeout, match=CAUSE):
            client.flush(timeout=0.5)


def test_a_request_to_a_listener_whose_certificate_does_not_verify_names_the_cause(
        wrong_ca: tuple[posa.Peer, posa.Peer]) -> None:
    _, client = wrong_ca
    for _ in range(TRIES):
        with pytest.raises(posa.Timeout, match=CAUSE):
            client.request("tlscause/server", "never", timeout=0.5)
