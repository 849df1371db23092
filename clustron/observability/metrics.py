"""
Prometheus metrics of one node.

Each node owns a L{NodeMetrics} on its own
L{prometheus_client.CollectorRegistry}, so several nodes in one process (the
testkit's simulated clusters) never share or clash over counters. Every
metric name starts with ``clustron_``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class CountFamily(Collector):
    """
    A counter family whose values the code keeps as plain ints, read when
    scraped: counting costs a dict update instead of a C{prometheus_client}
    call (with its lock), which matters on the per-message paths.

    The code adds to C{counts[key]} (any hashable key; L{add} does it, or
    the caller updates the dict itself); at scrape time C{labels(key)}
    gives each key's label values, and keys with the same labels add up.
    An unlabelled family counts in L{value} instead.

    @ivar counts: the count of each key.
    @ivar value: the count of an unlabelled family.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        labels: Callable[[Hashable], Sequence[str]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """
        @param name: the metric name, without C{_total}.
        @param labelnames: the label names (none for an unlabelled family).
        @param labels: the label values of a key; by default the key itself
            (a tuple of strings, or one string).
        @param registry: where to register it, if anywhere.
        """
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._labels = labels
        self.counts: dict[Hashable, int] = {}
        self.value = 0
        if registry is not None:
            registry.register(self)

    def add(self, key: Hashable, amount: int = 1) -> None:
        """
        Count C{amount} more for C{key}.
        """
        counts = self.counts
        counts[key] = counts.get(key, 0) + amount

    def get(self, *labels: str) -> float:
        """
        @return: the count of the given label values (all keys with them).
        """
        if not self.labelnames:
            return self.value
        return dict(self._totals()).get(tuple(labels), 0)

    def _totals(self) -> Iterable[tuple[tuple[str, ...], int]]:
        totals: dict[tuple[str, ...], int] = {}
        for key, count in list(self.counts.items()):
            if self._labels is not None:
                values = tuple(self._labels(key))
            else:
                values = key if isinstance(key, tuple) else (str(key),)
            totals[values] = totals.get(values, 0) + count
        return sorted(totals.items())

    def collect(self) -> Iterator[Metric]:
        """
        The family with its current counts.
        """
        if not self.labelnames:
            yield CounterMetricFamily(self.name, self.documentation, value=self.value)
            return
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in self._totals():
            family.add_metric(list(values), count)
        yield family

    def describe(self) -> Iterator[Metric]:
        """
        The family without values (for the registry's name checks).
        """
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames or None)


class LightHistogram(Collector):
    """
    A histogram kept in plain numbers, exported at scrape time like
    C{prometheus_client.Histogram}: L{observe} costs one bisection.

    @ivar buckets: the upper bounds, ascending (C{+Inf} implied).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        """
        @raise ValueError: when the buckets are not finite and ascending.
        """
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or sorted(set(bounds)) != bounds:
            raise ValueError(f"histogram {name}: buckets must ascend strictly, not {buckets!r}")
        self.name = name
        self.documentation = documentation
        self.buckets = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        """
        Count one observation of C{amount}.
        """
        self._counts[bisect.bisect_left(self.buckets, amount)] += 1
        self._sum += amount

    @property
    def count(self) -> int:
        """
        How many observations were made.
        """
        return sum(self._counts)

    def collect(self) -> Iterator[Metric]:
        """
        The family with cumulative buckets, as Prometheus expects.
        """
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.buckets, math.inf), self._counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self._sum
        )

    def describe(self) -> Iterator[Metric]:
        """
        The family without values (for the registry's name checks).
        """
        yield HistogramMetricFamily(self.name, self.documentation)


def _frame_type_labels(frame_type: Hashable) -> tuple[str]:
    from clustron.wire.framing import FRAME_TYPE_NAMES

    return (FRAME_TYPE_NAMES.get(frame_type, "other"),)  # type: ignore[call-overload]


class NodeMetrics:
    """
    The metrics one node exports.

    The per-frame and per-message counts (C{frames_sent},
    C{frames_received}, C{bytes_sent}, C{bytes_received},
    C{messages_sent}, C{messages_received}, C{request_latency}) are
    L{CountFamily} and L{LightHistogram} collectors kept in plain numbers;
    the rest are C{prometheus_client} metrics.

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
        # Counted by frame type (an int); labelled by its name when scraped.
        self.frames_sent = CountFamily(
            "clustron_frames_sent",
            "Frames written, by type.",
            ["type"],
            _frame_type_labels,
            registry=r,
        )
        self.frames_received = CountFamily(
            "clustron_frames_received",
            "Frames received, by type.",
            ["type"],
            _frame_type_labels,
            registry=r,
        )
        self.bytes_sent = CountFamily("clustron_bytes_sent", "Bytes written to peers.", registry=r)
        self.bytes_received = CountFamily(
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
        # Messaging: counted by envelope kind, labelled when scraped (the
        # messaging layer sets the labels function, see message_labels).
        self.messages_sent = CountFamily(
            "clustron_messages_sent",
            "Messages sent to peers, by kind (message: application data; reply: a "
            "response to a request; control: ordering protocol traffic) and order "
            "(unicast, fifo, causal, total, none).",
            ["kind", "order"],
            self._message_labels,
            registry=r,
        )
        self.messages_received = CountFamily(
            "clustron_messages_received",
            "Application messages received from peers, by kind and order.",
            ["kind", "order"],
            self._message_labels,
            registry=r,
        )
        #: Maps an envelope kind to its C{(kind, order)} labels; set by the
        #: messaging layer.
        self.message_labels: Callable[[Hashable], tuple[str, str]] = lambda kind: (
            "control",
            "none",
        )
        self.request_latency = LightHistogram(
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

    def _message_labels(self, kind: Hashable) -> tuple[str, str]:
        return self.message_labels(kind)


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
