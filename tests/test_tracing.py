"""
Tests for L{clustron.observability.tracing}: spans, W3C trace context through
a message envelope, and the SDK set-up from the C{tracing:} configuration.

Spans are captured with the SDK's C{InMemorySpanExporter} on providers made
here; the module's tracer is patched per test, so no global provider is ever
installed in the test process.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType, SimpleNamespace
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.trial.unittest import SynchronousTestCase

from clustron.config import TracingConfig
from clustron.errors import ConfigError
from clustron.observability import tracing


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """
    A provider that keeps every ended span in memory.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class Node:
    """
    One node's tracing, as in its own process: a provider and its spans.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.provider, self.exporter = recording_provider()
        self.tracer = self.provider.get_tracer(tracing.TRACER_NAME)
        self._case = case

    def use(self) -> None:
        """
        Make L{tracing.span} use this node's tracer.
        """
        self._case.patch(tracing, "tracer", self.tracer)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


class SpanTests(SynchronousTestCase):
    """
    L{tracing.span} opens a current span with prefixed attributes.
    """

    def setUp(self) -> None:
        self.node = Node(self)
        self.node.use()

    def test_attributes_are_prefixed(self) -> None:
        """
        Keyword attributes get the C{clustron.} prefix; None values are left
        out and other values recorded as text.
        """
        with tracing.span(
            "clustron.request",
            kind=SpanKind.CLIENT,
            topic="orders",
            size=12,
            ok=True,
            peers=("n2", "n3"),
            missing=None,
            view=(3, 7),
        ) as current:
            self.assertTrue(current.is_recording())
            self.assertIs(trace.get_current_span(), current)
        (finished,) = self.node.spans()
        self.assertEqual(finished.name, "clustron.request")
        self.assertEqual(finished.kind, SpanKind.CLIENT)
        self.assertEqual(
            dict(finished.attributes or {}),
            {
                "clustron.topic": "orders",
                "clustron.size": 12,
                "clustron.ok": True,
                "clustron.peers": ("n2", "n3"),
                "clustron.view": "(3, 7)",
            },
        )
        self.assertIsNotNone(finished.end_time)

    def test_nested_spans_share_the_trace(self) -> None:
        """
        A span opened inside another is its child.
        """
        with tracing.span("clustron.election") as outer:
            with tracing.span("clustron.view_change"):
                pass
        inner_span, outer_span = self.node.spans()
        self.assertEqual(inner_span.context.trace_id, outer.get_span_context().trace_id)
        assert inner_span.parent is not None
        self.assertEqual(inner_span.parent.span_id, outer_span.context.span_id)

    def test_exception_is_recorded(self) -> None:
        """
        An exception leaving the block marks the span as an error, is
        recorded as an event, and propagates.
        """
        with self.assertRaises(ValueError):
            with tracing.span("clustron.request"):
                raise ValueError("no such topic")
        (finished,) = self.node.spans()
        self.assertEqual(finished.status.status_code, StatusCode.ERROR)
        self.assertEqual([e.name for e in finished.events], ["exception"])

    def test_current_trace_id(self) -> None:
        """
        L{tracing.current_trace_id} gives the open span's trace id as hex,
        and None outside any span.
        """
        self.assertIsNone(tracing.current_trace_id())
        with tracing.span("clustron.broadcast") as current:
            trace_id = tracing.current_trace_id()
        self.assertEqual(trace_id, format(current.get_span_context().trace_id, "032x"))
        self.assertEqual(len(trace_id or ""), 32)

    def test_no_provider_is_a_no_op(self) -> None:
        """
        With the API alone (no provider), spans are non-recording, nothing
        is injected, and no trace id is current.
        """
        self.patch(tracing, "tracer", trace.NoOpTracer())
        carrier: dict[str, str] = {}
        with tracing.span("clustron.request") as current:
            self.assertFalse(current.is_recording())
            tracing.inject(carrier)
            self.assertIsNone(tracing.current_trace_id())
        self.assertEqual(carrier, {})


class PropagationTests(SynchronousTestCase):
    """
    L{tracing.inject} and L{tracing.extract} carry a trace from one node to
    another in a message envelope.
    """

    def test_request_joins_across_nodes(self) -> None:
        """
        A span on the sending node and the span of the receiving node,
        opened with the context extracted from the envelope, are in one
        trace: the receiver's parent is the sender's span, marked remote.
        """
        sender, receiver = Node(self), Node(self)
        sender.use()
        with tracing.span("clustron.request", kind=SpanKind.CLIENT, topic="t") as sent:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
        envelope = json.loads(json.dumps({"topic": "t", "trace": carrier}))

        receiver.use()
        context = tracing.extract(envelope["trace"])
        with tracing.span("clustron.request.handle", context=context, kind=SpanKind.SERVER):
            with tracing.span("clustron.handler"):
                pass

        (sent_span,) = sender.spans()
        handler_span, handled_span = receiver.spans()
        trace_id = sent.get_span_context().trace_id
        self.assertEqual(sent_span.context.trace_id, trace_id)
        self.assertEqual(handled_span.context.trace_id, trace_id)
        self.assertEqual(handler_span.context.trace_id, trace_id)
        assert handled_span.parent is not None
        self.assertEqual(handled_span.parent.span_id, sent_span.context.span_id)
        self.assertTrue(handled_span.parent.is_remote)
        assert handler_span.parent is not None
        self.assertEqual(handler_span.parent.span_id, handled_span.context.span_id)

    def test_carrier_is_w3c(self) -> None:
        """
        The carrier holds a W3C C{traceparent}: version 00, the trace id,
        the span id, and flags with the sampled bit set.
        """
        node = Node(self)
        node.use()
        with tracing.span("clustron.broadcast") as current:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
        context = current.get_span_context()
        self.assertEqual(list(carrier), ["traceparent"])
        version, trace_id, span_id, flags = carrier["traceparent"].split("-")
        self.assertEqual(version, "00")
        self.assertEqual(trace_id, f"{context.trace_id:032x}")
        self.assertEqual(span_id, f"{context.span_id:016x}")
        self.assertTrue(int(flags, 16) & 0x01, f"not sampled: {flags}")

    def test_tracestate_travels(self) -> None:
        """
        A C{tracestate} from upstream is carried on.
        """
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        context = tracing.extract({"traceparent": parent, "tracestate": "vendor=abc"})
        carrier: dict[str, str] = {}
        tracing.inject(carrier, context)
        self.assertEqual(carrier, {"traceparent": parent, "tracestate": "vendor=abc"})

    def test_malformed_carrier_starts_a_new_trace(self) -> None:
        """
        Whatever a peer sends that is not a valid trace context is ignored:
        the span opened with the extracted context is the root of a new
        trace, not a child of anything, and nothing raises.
        """
        node = Node(self)
        node.use()
        valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        bad_carriers: list[Any] = [
            None,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ["traceparent", valid],
            {},
            {"traceparent": 5},
            {"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            {"traceparent": "not a traceparent"},
            {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
            {"traceparent": valid + "-" + "x" * 600},
            {"tracestate": "vendor=abc"},
        ]
        with tracing.span("clustron.outer"):
            for carrier in bad_carriers:
                context = tracing.extract(carrier)
                self.assertFalse(
                    trace.get_current_span(context).get_span_context().is_valid, carrier
                )
                with tracing.span("clustron.request.handle", context=context):
                    pass
        spans = node.spans()
        handled = [s for s in spans if s.name == "clustron.request.handle"]
        self.assertEqual(len(handled), len(bad_carriers))
        for handled_span in handled:
            self.assertIsNone(handled_span.parent)
        self.assertEqual(len({s.context.trace_id for s in handled}), len(bad_carriers))

    def test_extract_ignores_the_current_context(self) -> None:
        """
        An empty carrier yields an empty context even inside a span, so a
        message without a trace never joins an unrelated local trace.
        """
        node = Node(self)
        node.use()
        with tracing.span("clustron.local"):
            context = tracing.extract({})
        self.assertFalse(trace.get_current_span(context).get_span_context().is_valid)


class RecordingExporter(SpanExporter):
    """
    Stands in for the console and OTLP exporters: keeps what it is given.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class FakeModules:
    """
    An importer for L{tracing.build_provider}: the real SDK, except that
    exporters are L{RecordingExporter}s and listed modules are missing.
    """

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        self.exporters: list[RecordingExporter] = []

    def exporter(self, **options: Any) -> RecordingExporter:
        made = RecordingExporter(**options)
        self.exporters.append(made)
        return made

    def __call__(self, name: str) -> ModuleType:
        if name in self.missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == "opentelemetry.sdk.trace.export":
            real = importlib.import_module(name)
            return SimpleNamespace(  # type: ignore[return-value]
                BatchSpanProcessor=real.BatchSpanProcessor,
                ConsoleSpanExporter=self.exporter,
            )
        if name == "opentelemetry.exporter.otlp.proto.http.trace_exporter":
            return SimpleNamespace(OTLPSpanExporter=self.exporter)  # type: ignore[return-value]
        return importlib.import_module(name)


class ConfigureTests(SynchronousTestCase):
    """
    L{tracing.build_provider} and L{tracing.configure_tracing} follow the
    C{tracing:} configuration.
    """

    def export_one(self, provider: Any) -> None:
        with provider.get_tracer("test").start_as_current_span("clustron.request"):
            pass
        self.assertTrue(provider.force_flush())

    def test_disabled(self) -> None:
        """
        Disabled tracing builds and installs nothing, even with an exporter
        named and the SDK missing.
        """
        installed: list[Any] = []
        modules = FakeModules(missing=("opentelemetry.sdk.trace",))
        result = tracing.configure_tracing(
            TracingConfig(enabled=False, exporter="console"), modules, installed.append
        )
        self.assertIsNone(result)
        self.assertEqual(installed, [])

    def test_console(self) -> None:
        """
        C{exporter: console} sends every span to a console exporter, through
        a batch processor; the provider is installed and names the service.
        """
        installed: list[Any] = []
        modules = FakeModules()
        provider = tracing.configure_tracing(
            TracingConfig(enabled=True, exporter="console"), modules, installed.append
        )
        self.addCleanup(provider.shutdown)
        self.assertEqual(installed, [provider])
        self.assertIsInstance(provider, TracerProvider)
        self.assertEqual(provider.resource.attributes["service.name"], "clustron")
        self.export_one(provider)
        (exporter,) = modules.exporters
        self.assertEqual(exporter.options, {})
        self.assertEqual([s.name for s in exporter.spans], ["clustron.request"])

    def test_otlp_endpoint(self) -> None:
        """
        C{exporter: otlp} sends spans to an OTLP exporter for the configured
        endpoint.
        """
        modules = FakeModules()
        provider = tracing.build_provider(
            TracingConfig(enabled=True, exporter="otlp", endpoint="http://127.0.0.1:4318/v1/traces"),
            modules,
        )
        self.addCleanup(provider.shutdown)
        self.export_one(provider)
        (exporter,) = modules.exporters
        self.assertEqual(exporter.options, {"endpoint": "http://127.0.0.1:4318/v1/traces"})
        self.assertEqual(len(exporter.spans), 1)

    def test_otlp_default_endpoint(self) -> None:
        """
        Without an endpoint the OTLP exporter is made with none, so its own
        default and the C{OTEL_EXPORTER_OTLP_*} variables apply.
        """
        modules = FakeModules()
        provider = tracing.build_provider(TracingConfig(enabled=True, exporter="otlp"), modules)
        self.addCleanup(provider.shutdown)
        (exporter,) = modules.exporters
        self.assertEqual(exporter.options, {})

    def test_none_exporter(self) -> None:
        """
        C{exporter: none} makes real spans (so trace context propagates)
        and exports nothing.
        """
        modules = FakeModules()
        provider = tracing.build_provider(TracingConfig(enabled=True, exporter="none"), modules)
        self.addCleanup(provider.shutdown)
        with provider.get_tracer("test").start_as_current_span("clustron.request") as current:
            self.assertTrue(current.get_span_context().is_valid)
        self.assertEqual(modules.exporters, [])

    def test_real_exporters(self) -> None:
        """
        With the real modules, the console exporter is the SDK's.
        """
        provider = tracing.build_provider(TracingConfig(enabled=True, exporter="console"))
        self.addCleanup(provider.shutdown)
        self.assertIsInstance(provider, TracerProvider)

    def test_sdk_missing(self) -> None:
        """
        Without the SDK, enabling tracing fails naming the key and the
        extra to install; nothing is installed.
        """
        installed: list[Any] = []
        modules = FakeModules(missing=("opentelemetry.sdk.trace",))
        with self.assertRaises(ConfigError) as raised:
            tracing.configure_tracing(
                TracingConfig(enabled=True, exporter="console"), modules, installed.append
            )
        ((key, reason),) = raised.exception.errors
        self.assertEqual(key, "tracing.enabled")
        self.assertIn("pip install 'clustron[tracing]'", reason)
        self.assertIn("opentelemetry.sdk.trace", reason)
        self.assertEqual(installed, [])

    def test_otlp_exporter_missing(self) -> None:
        """
        With the SDK but not the OTLP exporter, C{exporter: otlp} fails
        naming the exporter and the extra.
        """
        modules = FakeModules(missing=("opentelemetry.exporter.otlp.proto.http.trace_exporter",))
        with self.assertRaises(ConfigError) as raised:
            tracing.build_provider(TracingConfig(enabled=True, exporter="otlp"), modules)
        ((key, reason),) = raised.exception.errors
        self.assertEqual(key, "tracing.enabled")
        self.assertIn("'otlp'", reason)
        self.assertIn("clustron[tracing]", reason)

    def test_unknown_exporter(self) -> None:
        """
        An exporter name the validator would have refused is refused here
        too, naming the key.
        """
        with self.assertRaises(ConfigError) as raised:
            tracing.build_provider(TracingConfig(enabled=True, exporter="zipkin"), FakeModules())
        self.assertEqual(raised.exception.errors[0][0], "tracing.exporter")
