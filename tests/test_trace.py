"""W3C trace context goes with every message sent inside a trace, and a handler runs
inside the trace its message came with: across processes, through a request, a
service call and a one-way send, with OpenTelemetry's SDK recording the spans in
memory; and without OpenTelemetry, passed on unchanged."""
from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import posa
from posa.ops import trace_context, trace_headers
from tests.support import Proc
from tests.tracing import CHILD_SDK, PARENT, local_tracing

pytestmark = pytest.mark.timeout(120)

# the other process: its own SDK and in-memory exporter; a peer, a service, a relay
# (whose handler requests the peer: its own send continues the trace) and a sink
SERVER = """
import json, sys, threading
""" + CHILD_SDK + """registry = posa.RegistryClient(sys.argv[1])
sunk = threading.Event()

def echo(msg):
    return trace_headers().get("traceparent")

def sink(msg):
    sunk.set()

def spans(msg):
    sunk.wait(20)
    return [[s.name, format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"),
             s.parent and format(s.parent.span_id, "016x"), s.kind.name]
            for s in exporter.get_finished_spans()]

own_reactor = posa.Reactor("relay")
own_reactor.start()
peer = posa.Peer("tr/echo", registry=registry, listen="tcp://127.0.0.1:0", handler=echo)
relay = posa.Peer("tr/relay", registry=registry, listen="tcp://127.0.0.1:0",
                  reactor=own_reactor,       # its handler waits on tr/echo's reactor
                  handler=lambda msg: relay.request("tr/echo", None, timeout=10))
sinker = posa.Peer("tr/sink", registry=registry, listen="tcp://127.0.0.1:0", handler=sink)
reporter = posa.Peer("tr/spans", registry=registry, listen="tcp://127.0.0.1:0", handler=spans)
server = posa.Server("tr/svc", lambda body: trace_headers().get("traceparent"),
                     registry=registry, workers=2)
print("READY", flush=True)
sys.stdin.readline()
"""



def test_a_trace_continues_through_request_call_and_send_into_another_process(
        dispatcher: str) -> None:
    server = Proc.python(SERVER, dispatcher)
    provider, exporter = local_tracing()
    try:
        server.expect("READY", timeout=60)
        with posa.RegistryClient(dispatcher) as registry, \
                posa.Peer("tr/client", registry=registry) as client, \
                posa.Client(registry=registry) as services:
            with provider.get_tracer("test").start_as_current_span("client-op") as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                mine = format(span.get_span_context().span_id, "016x")
                seen = [client.request("tr/echo", None, timeout=10),
                        services.call("tr/svc", None, timeout=10),
                        client.request("tr/relay", None, timeout=10)]
                client.send("tr/sink", "event")
                client.flush(10)
            spans = client.request("tr/spans", None, timeout=30)
    finally:
        server.close()
    assert all(tp.split("-")[1] == trace_id for tp in seen), (trace_id, seen)
    handled = {(name, parent, kind) for name, tid, _, parent, kind in spans if tid == trace_id}
    assert ("handle tr/echo", mine, "SERVER") in handled
    assert ("handle tr/relay", mine, "SERVER") in handled
    assert ("handle tr/sink", mine, "CONSUMER") in handled
    assert any(name.startswith("handle tr/svc/") and parent == mine and kind == "SERVER"
               for name, parent, kind in handled), handled
    # the relay's own request went on in the same trace, under the relay's span
    relay = next(sid for name, tid, sid, _, _ in spans
                 if name == "handle tr/relay" and tid == trace_id)
    assert ("handle tr/echo", relay, "SERVER") in handled
    # the handlers saw their own spans as the parent of what they would send
    assert {tp.split("-")[2] for tp in seen}.isdisjoint({mine})


def test_outside_a_trace_no_header_goes_out() -> None:
    with posa.LocalRegistry() as registry, \
            posa.Peer("tr/plain", registry=registry, handler=lambda m: dict(m.headers)) as b, \
            posa.Peer("tr/asker", registry=registry) as a:
        assert trace_headers() == {}
        assert "traceparent" not in a.request("tr/plain", None, timeout=10)
        with trace_context({"traceparent": PARENT, "tracestate": "k=v"}):
            headers = a.request("tr/plain", None, timeout=10)
            assert headers["traceparent"].split("-")[1] == PARENT.split("-")[1]
            hand = "00-11111111111111111111111111111111-2222222222222222-01"
            assert a.request("tr/plain", None, timeout=10,      # set by hand: kept
                             headers={"traceparent": hand})["traceparent"] == hand
        assert "traceparent" not in a.request("tr/plain", None, timeout=10)
        assert b.name == "tr/plain"


@pytest.mark.parametrize("bad", ["nonsense", "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                                 "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
                                 "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"])
def test_a_malformed_traceparent_is_ignored(bad: str) -> None:
    with posa.LocalRegistry() as registry, \
            posa.Peer("tr/b", registry=registry, handler=lambda m: trace_headers()) as b, \
            posa.Peer("tr/a", registry=registry) as a:
        assert a.request("tr/b", None, timeout=10, headers={"traceparent": bad}) == {}
        with trace_context({"traceparent": bad}):
            assert trace_headers() == {}
        assert b.name == "tr/b"


WITHOUT_OTEL = """
import json, sys
sys.modules["opentelemetry"] = None          # as if it were not installed
import posa
from posa.ops import trace_context, trace_headers
from posa.runtime import trace
assert not trace.OTEL
with posa.LocalRegistry() as registry:
    seen = []
    def last(msg):
        seen.append(dict(msg.headers))
        return trace_headers()
    own_reactor = posa.Reactor("relay")
    own_reactor.start()
    relay = posa.Peer("tr/relay", registry=registry, reactor=own_reactor,
                      handler=lambda msg: relay.request("tr/last", None, timeout=10))
    with posa.Peer("tr/last", registry=registry, handler=last), \\
            posa.Peer("tr/first", registry=registry) as first:
        plain = first.request("tr/relay", None, timeout=10)
        with trace_context({"traceparent": sys.argv[1], "tracestate": "a=1"}):
            traced = first.request("tr/relay", None, timeout=10)
    relay.close()
    with posa.EventChannel("tr/events", registry=registry), \\
            posa.Publisher("tr/events", registry=registry) as pub, \\
            posa.Subscriber("tr/events", registry=registry) as sub:
        with trace_context({"traceparent": sys.argv[1], "tracestate": "a=1"}):
            pub.publish("t", 1)
        pub.flush(10)
        event = sub.receive(10)
        with sub.handling(event):
            seen.append(trace_headers())
print("RESULT", json.dumps([plain, traced, seen]), flush=True)
"""


def test_without_opentelemetry_the_context_is_passed_on_unchanged() -> None:
    proc = Proc.python(WITHOUT_OTEL, PARENT)
    try:
        plain, traced, seen = proc.json("RESULT", timeout=60)
    finally:
        proc.close()
    assert plain == {} and "traceparent" not in seen[0]
    assert traced == {"traceparent": PARENT, "tracestate": "a=1"}
    assert seen[1]["traceparent"] == PARENT and seen[1]["tracestate"] == "a=1"
    assert seen[2] == {"traceparent": PARENT, "tracestate": "a=1"}     # through a publish


def test_the_send_path_checks_one_context_variable() -> None:
    from posa.delivery import forwarder
    from posa.runtime import trace
    assert forwarder._traced is trace.active
    assert not trace.active()                   # nothing active in a test's thread
    probe: Any = sys.modules["opentelemetry.context"].get_current
    assert trace.active is probe
    assert json.dumps(trace_headers()) == "{}"
