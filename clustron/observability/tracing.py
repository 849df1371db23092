"""
OpenTelemetry tracing for Clustron.

Clustron's code uses only the OpenTelemetry I{API} (a required dependency,
cheap no-ops until a provider is installed)::

    from clustron.observability import tracing

    with tracing.span("clustron.request", topic=topic, peer=peer) as s:
        carrier: dict[str, str] = {}
        tracing.inject(carrier)          # W3C traceparent (and tracestate)
        envelope["trace"] = carrier      # travels with the message

and on the receiving node::

    context = tracing.extract(envelope.get("trace"))
    with tracing.span("clustron.request.handle", context=context, topic=topic):
        ...

so that one request's spans on both nodes join one trace. The I{SDK} and the
OTLP exporter are the optional extra C{tracing}
(C{pip install 'clustron[tracing]'}); L{configure_tracing} installs them
from the node's C{tracing:} configuration.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.logger import Logger

from clustron._version import __version__
from clustron.errors import ConfigError

log = Logger()

#: The instrumentation scope of every Clustron span.
TRACER_NAME = "clustron"

#: Clustron's tracer. It follows whichever tracer provider is installed
#: globally (a no-op until one is), so it may be imported and used anywhere.
tracer: trace.Tracer = trace.get_tracer(TRACER_NAME, __version__)
_DEFAULT_TRACER = tracer


def active() -> bool:
    """
    Whether spans go anywhere: a tracer provider is installed globally (by
    L{configure_tracing} or by the embedding program), or L{tracer} was
    replaced. Hot paths skip building spans when this is False, since the
    no-op spans of the API still cost time per message.
    """
    if tracer is not _DEFAULT_TRACER:
        return True
    if getattr(trace, "_TRACER_PROVIDER", True) is None and not _ENV_PROVIDER:
        # Nothing installed (what get_tracer_provider() finds out more
        # slowly, reading the environment each time).
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


#: Whether the environment names a tracer provider for the API to load.
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ

#: The prefix given to the keyword attributes of L{span}.
ATTRIBUTE_PREFIX = "clustron."

#: The carrier keys L{inject} writes and L{extract} reads (W3C Trace Context).
CARRIER_KEYS = ("traceparent", "tracestate")

#: The longest carrier value L{extract} accepts; W3C allows a traceparent
#: of 55 characters and a tracestate of 32 entries of up to 256 each, but
#: implementations are told to keep at most 512 characters of tracestate.
MAX_CARRIER_VALUE = 512

#: The pip extra that brings the SDK and the OTLP exporter.
EXTRA = "tracing"

_propagator = TraceContextTextMapPropagator()

_INSTALL_HINT = f"pip install 'clustron[{EXTRA}]'"


def inject(carrier: dict[str, str], context: Context | None = None) -> None:
    """
    Write the W3C trace context of the current span (or of C{context}) into
    C{carrier}: C{traceparent} and, when there is one, C{tracestate}.
    Nothing is written when there is no valid span (tracing disabled, or no
    span open), so an empty carrier can be left out of a message.

    @param carrier: a dict that will travel in a message envelope.
    @param context: the context to propagate; the current one when None.
    """
    _propagator.inject(carrier, context=context)


def extract(carrier: object) -> Context:
    """
    Read a trace context written by L{inject} on another node.

    The carrier comes from the network, so anything malformed (not a
    mapping, values that are not strings or are too long, an invalid
    traceparent) is ignored rather than raised.

    @param carrier: the dict from a message envelope, or None.
    @return: a context whose span is the remote parent, to pass to L{span}
        as C{context}; an empty context (a new trace starts) when the
        carrier holds no valid trace context.
    """
    if not isinstance(carrier, Mapping):
        return Context()
    clean: dict[str, str] = {}
    for key in CARRIER_KEYS:
        value = carrier.get(key)
        if isinstance(value, str) and len(value) <= MAX_CARRIER_VALUE:
            clean[key] = value
    if "traceparent" not in clean:
        return Context()
    return _propagator.extract(clean, context=Context())


def _attribute(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


@contextmanager
def span(
    name: str,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    **attributes: Any,
) -> Iterator[Span]:
    """
    Open a span (the current one while the block runs) and end it after.
    An exception escaping the block is recorded on the span, which is then
    marked as an error, and propagates.

    @param name: the span's name, such as C{"clustron.request"}.
    @param context: the parent context, such as one from L{extract}; the
        current context when None.
    @param kind: the span's kind (C{SpanKind.CLIENT} for a request sent,
        C{SpanKind.SERVER} for one handled, C{PRODUCER}/C{CONSUMER} for
        broadcasts).
    @param attributes: span attributes; each keyword is prefixed with
        C{"clustron."} (C{node_id="n1"} becomes C{clustron.node_id}). None
        values are left out; values other than strings, booleans, numbers
        and lists of strings are recorded as their C{str()}.
    @return: a context manager giving the span.
    """
    recorded = {
        ATTRIBUTE_PREFIX + key: _attribute(value)
        for key, value in attributes.items()
        if value is not None
    }
    with tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=recorded
    ) as current:
        yield current


def current_trace_id() -> str | None:
    """
    @return: the id of the current trace as 32 hex digits (for log events),
        or None when no span is recording.
    """
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x")


def _require(module: str, what: str, importer: Callable[[str], ModuleType]) -> ModuleType:
    try:
        return importer(module)
    except ImportError as e:
        raise ConfigError(
            [
                (
                    "tracing.enabled",
                    f"{what} needs the optional extra {EXTRA!r}, which is not "
                    f"installed ({e}); install it with: {_INSTALL_HINT}",
                )
            ]
        ) from None


def build_provider(
    config: Any, importer: Callable[[str], ModuleType] = importlib.import_module
) -> Any:
    """
    Build an SDK tracer provider for a C{tracing:} configuration, without
    installing it.

    @param config: a L{clustron.config.TracingConfig} (C{enabled},
        C{exporter}: C{none}, C{console} or C{otlp}, C{endpoint}).
    @param importer: imports a module by name (tests replace it).
    @return: an C{opentelemetry.sdk.trace.TracerProvider} whose spans go
        to the configured exporter through a batch processor (no exporter
        for C{none}: spans are made and propagated, not exported); None
        when tracing is not enabled.
    @raise ConfigError: naming C{tracing.enabled} and the extra to install
        when the SDK or the exporter is missing, or C{tracing.exporter} when
        it is unknown.
    """
    if not config.enabled:
        return None
    sdk_trace = _require("opentelemetry.sdk.trace", "tracing", importer)
    sdk_export = _require("opentelemetry.sdk.trace.export", "tracing", importer)
    sdk_resources = _require("opentelemetry.sdk.resources", "tracing", importer)
    resource = sdk_resources.Resource.create(
        {"service.name": "clustron", "service.version": __version__}
    )
    provider = sdk_trace.TracerProvider(resource=resource)
    exporter: Any
    if config.exporter == "none":
        return provider
    if config.exporter == "console":
        exporter = sdk_export.ConsoleSpanExporter()
    elif config.exporter == "otlp":
        otlp = _require(
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "tracing.exporter 'otlp'",
            importer,
        )
        exporter = (
            otlp.OTLPSpanExporter(endpoint=config.endpoint)
            if config.endpoint
            else otlp.OTLPSpanExporter()
        )
    else:
        raise ConfigError(
            [
                (
                    "tracing.exporter",
                    f"must be one of none, console, otlp; got {config.exporter!r}",
                )
            ]
        )
    provider.add_span_processor(sdk_export.BatchSpanProcessor(exporter))
    return provider


def configure_tracing(
    config: Any,
    importer: Callable[[str], ModuleType] = importlib.import_module,
    install: Callable[[Any], None] = trace.set_tracer_provider,
) -> Any:
    """
    Install the OpenTelemetry SDK for this process as the node's C{tracing:}
    configuration says: nothing when C{enabled} is false; otherwise an SDK
    tracer provider exporting to the console or to an OTLP/HTTP collector
    (C{endpoint}, or the C{OTEL_EXPORTER_OTLP_*} environment variables when
    none is given).

    OpenTelemetry allows one global provider per process: call this once,
    at start-up (tracing settings are not reloadable).

    @param config: a L{clustron.config.TracingConfig}.
    @param importer: imports a module by name (tests replace it).
    @param install: makes a provider the global one (tests replace it).
    @return: the installed provider, or None when tracing is disabled.
    @raise ConfigError: when the extra C{tracing} is not installed (the
        message says how to install it).
    """
    provider = build_provider(config, importer)
    if provider is None:
        return None
    install(provider)
    log.info(
        "tracing enabled: exporter {exporter}, endpoint {endpoint}",
        exporter=config.exporter,
        endpoint=config.endpoint or "-",
    )
    return provider
