"""The nats:// transport (posa.transport.nats) on real nats-server processes:
the conformance suite, addresses, cutting frames to max_payload, and how loss
inside NATS (a slow consumer, a server gone) surfaces as an ended connection."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from posa import transport
from posa.transport import testing as conformance
from tests.natsserver import NatsCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=1) as running:
        yield running


@pytest.mark.timeout(120)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: conformance.Check, cluster: NatsCluster) -> None:
    check(lambda: cluster.urls)
