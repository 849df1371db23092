"""
Prometheus metrics of one node.

Each node owns a L{NodeMetrics} on its own
L{prometheus_client.CollectorRegistry}, so several nodes in one process (the
testkit's simulated clusters) never share or clash over counters. Every
metric name starts with ``clustron_``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class NodeMetrics:
    """
    The metrics one node exports.

    @ivar registry: the registry that holds them (served at C{GET /metrics}).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Wire.
        self.frame_errors = Counter(
            "clustron_frame_errors",
            "Connections closed because a peer broke the framing rules, by reason.",
            ["reason"],
            registry=r,
        )
        self.handshake_rejections = Counter(
            "clustron_handshake_rejections",
            "Handshakes refused (by this node or by the peer), by reason and side.",
            ["reason", "side"],
            registry=r,
        )
        self.protocol_violations = Counter(
            "clustron_protocol_violations",
            "Connections closed because a well-framed message broke the protocol.",
            ["reason"],
            registry=r,
        )
        self.frames_sent = Counter(
            "clustron_frames_sent", "Frames written, by type.", ["type"], registry=r
        )
        self.frames_received = Counter(
            "clustron_frames_received", "Frames received, by type.", ["type"], registry=r
        )
        self.bytes_sent = Counter("clustron_bytes_sent", "Bytes written to peers.", registry=r)
        self.bytes_received = Counter(
            "clustron_bytes_received", "Bytes received from peers.", registry=r
        )
        self.connections = Gauge(
            "clustron_peer_connections", "Peers with a completed handshake.", registry=r
        )
        self.connection_attempts = Counter(
            "clustron_connection_attempts",
            "Outgoing connection attempts, by result.",
            ["result"],
            registry=r,
        )
        self.send_queue_frames = Gauge(
            "clustron_send_queue_frames",
            "Frames waiting in per-peer send queues (all peers).",
            registry=r,
        )
        self.send_queue_full = Counter(
            "clustron_send_queue_full",
            "Sends refused because a peer's bounded send queue was full.",
            registry=r,
        )
        # Membership.
        self.members = Gauge(
            "clustron_members", "Members of the current view, by state.", ["state"], registry=r
        )
        self.view_epoch = Gauge("clustron_view_epoch", "Epoch of the current view.", registry=r)
        self.view_seq = Gauge(
            "clustron_view_seq", "Sequence number of the current view.", registry=r
        )
        self.is_coordinator = Gauge(
            "clustron_is_coordinator", "1 when this node coordinates the view.", registry=r
        )
        self.has_quorum = Gauge(
            "clustron_has_quorum", "1 when this node's side of the cluster has quorum.", registry=r
        )
        self.elections = Counter(
            "clustron_elections", "Elections this node stood in, by reason.", ["reason"], registry=r
        )
        self.views_installed = Counter(
            "clustron_views_installed", "Views this node installed as coordinator.", registry=r
        )
        self.suspicions = Counter("clustron_suspicions", "Members this node suspected.", registry=r)
        self.suspicions_refuted = Counter(
            "clustron_suspicions_refuted",
            "Suspicions that turned out false (the member answered).",
            registry=r,
        )
        self.stale_epoch_refused = Counter(
            "clustron_stale_epoch_refused",
            "Messages or actions refused because they carried an older epoch.",
            registry=r,
        )
        # Messaging.
        self.messages_sent = Counter(
            "clustron_messages_sent",
            "Messages sent to peers, by kind (message: application data; reply: a "
            "response to a request; control: ordering protocol traffic) and order "
            "(unicast, fifo, causal, total, none).",
            ["kind", "order"],
            registry=r,
        )
        self.messages_received = Counter(
            "clustron_messages_received",
            "Application messages received from peers, by kind and order.",
            ["kind", "order"],
            registry=r,
        )
        self.request_latency = Histogram(
            "clustron_request_latency_seconds",
            "Time from sending a request to its reply.",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
            ),
            registry=r,
        )
        self.heartbeat_rtt = Histogram(
            "clustron_heartbeat_rtt_seconds",
            "Round-trip time of heartbeat probes.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )


class _Sampled(Collector):
    """
    Metrics whose values are read from the running code when scraped.
    """

    def __init__(self) -> None:
        self._samples: list[tuple[str, str, str, Callable[[], float]]] = []

    def add(self, kind: str, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._samples.append((kind, name, documentation, read))

    def collect(self) -> Iterator[Metric]:
        for kind, name, documentation, read in self._samples:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value=read())

    def describe(self) -> Iterator[Metric]:
        return iter(())


def sample(
    metrics: NodeMetrics, kind: str, name: str, documentation: str, read: Callable[[], float]
) -> None:
    """
    Export a value the code already counts (C{kind} C{"counter"} or
    C{"gauge"}), read at scrape time.
    """
    sampled = getattr(metrics, "_sampled", None)
    if sampled is None:
        sampled = metrics._sampled = _Sampled()  # type: ignore[attr-defined]
        metrics.registry.register(sampled)
    sampled.add(kind, name, documentation, read)
