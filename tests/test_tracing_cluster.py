"""
One request's spans join one trace across two nodes: the trace context
travels in the message envelope (W3C traceparent).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from clustron.observability import tracing
from clustron.testkit.cluster import SimCluster

try:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:  # pragma: no cover - the tracing extra is missing
    TracerProvider = None


class CrossNodeTraceTests(SynchronousTestCase):
    """
    Spans of a request, a broadcast and an election, captured in memory.
    """

    def setUp(self) -> None:
        if TracerProvider is None:
            raise self.skipTest("needs the tracing extra: pip install 'clustron[tracing]'")
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        # A local provider, not the global one: tests must not install that.
        self.patch(tracing, "tracer", provider.get_tracer("clustron"))
        self.cluster = SimCluster(3, seed=1)
        self.cluster.start()
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 3))

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def test_request_spans_join(self) -> None:
        self.cluster.nodes["n2"].on_message("echo", lambda m: m.body)
        self.exporter.clear()
        results: list[Any] = []
        self.cluster.nodes["n1"].request("n2", "echo", "hi").addBoth(results.append)
        self.cluster.run(0.2)
        self.assertEqual(results, ["hi"])
        (request,) = self.spans("clustron.request")
        (handle,) = self.spans("clustron.handle")
        self.assertEqual(request.context.trace_id, handle.context.trace_id)
        self.assertEqual(handle.parent.span_id, request.context.span_id)
        self.assertTrue(handle.parent.is_remote)
        self.assertEqual(handle.attributes["clustron.topic"], "echo")
        self.assertEqual(handle.attributes["clustron.sender"], "n1")

    def test_total_order_broadcast_spans_join(self) -> None:
        for node in self.cluster.nodes.values():
            node.on_message("t", lambda m: None)
        self.cluster.run(0.5)
        self.exporter.clear()
        self.cluster.nodes["n1"].broadcast("t", "x", order="total")
        self.cluster.run(0.5)
        (broadcast,) = self.spans("clustron.broadcast")
        handles = self.spans("clustron.handle")
        self.assertEqual(len(handles), 3)
        self.assertEqual({h.context.trace_id for h in handles}, {broadcast.context.trace_id})

    def test_election_span(self) -> None:
        self.exporter.clear()
        self.cluster.crash("n3")
        self.cluster.run(3)
        (election,) = self.spans("clustron.election")
        self.assertEqual(election.attributes["clustron.epoch"], 2)
        self.assertTrue(self.spans("clustron.view_install"))
