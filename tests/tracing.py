"""What the trace tests share: a W3C parent, the SDK set-up of a child process,
and a tracer provider with an in-memory exporter for this process."""
from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["PARENT", "CHILD_SDK", "local_tracing"]

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# the head of a child process's script: its own SDK and in-memory ``exporter``,
# installed as the global provider (posa's spans go there), posa imported
CHILD_SDK = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import posa
from posa.ops import trace_headers

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
"""


def local_tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    """This process's own provider (not the global one) and its exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter
