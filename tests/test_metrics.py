"""
Tests for L{clustron.observability.metrics}: the counters kept in plain
numbers and exported when scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from clustron.observability.metrics import CountFamily, LightHistogram, NodeMetrics, sample


class CountFamilyTests(SynchronousTestCase):
    """
    L{CountFamily}.
    """

    def test_unlabelled(self) -> None:
        """
        An unlabelled family exports its C{value} as a counter.
        """
        registry = CollectorRegistry()
        family = CountFamily("x_bytes", "Bytes.", registry=registry)
        family.value += 7
        self.assertEqual(registry.get_sample_value("x_bytes_total"), 7)
        self.assertEqual(family.get(), 7)

    def test_labelled_keys_add_up(self) -> None:
        """
        Counts are kept by key and exported by the labels of each key; keys
        with the same labels add up.
        """
        registry = CollectorRegistry()
        family = CountFamily(
            "x_things",
            "Things.",
            ["kind"],
            lambda key: ("odd" if key % 2 else "even",),  # type: ignore[operator]
            registry=registry,
        )
        for key in (1, 2, 3, 3):
            family.add(key)
        family.counts[4] = family.counts.get(4, 0) + 5
        self.assertEqual(registry.get_sample_value("x_things_total", {"kind": "odd"}), 3)
        self.assertEqual(registry.get_sample_value("x_things_total", {"kind": "even"}), 6)
        self.assertEqual(family.get("odd"), 3)
        self.assertEqual(family.get("none"), 0)

    def test_default_labels(self) -> None:
        """
        Without a labels function a key is its label values (a tuple, or
        one value).
        """
        registry = CollectorRegistry()
        family = CountFamily("x_pairs", "Pairs.", ["a", "b"], registry=registry)
        family.add(("1", "2"), 3)
        self.assertEqual(registry.get_sample_value("x_pairs_total", {"a": "1", "b": "2"}), 3)


class LightHistogramTests(SynchronousTestCase):
    """
    L{LightHistogram}.
    """

    def test_exported_like_prometheus(self) -> None:
        """
        Buckets are cumulative, bounds inclusive, with C{+Inf}, C{_count}
        and C{_sum}.
        """
        registry = CollectorRegistry()
        histogram = LightHistogram("x_seconds", "Time.", [0.1, 1.0], registry=registry)
        for value in (0.05, 0.1, 0.5, 3.0):
            histogram.observe(value)

        def bucket(le: str) -> float | None:
            return registry.get_sample_value("x_seconds_bucket", {"le": le})

        self.assertEqual((bucket("0.1"), bucket("1.0"), bucket("+Inf")), (2, 3, 4))
        self.assertEqual(registry.get_sample_value("x_seconds_count"), 4)
        self.assertAlmostEqual(registry.get_sample_value("x_seconds_sum") or 0, 3.65)
        self.assertEqual(histogram.count, 4)

    def test_buckets_validated(self) -> None:
        """
        Buckets must ascend strictly.
        """
        self.assertRaises(ValueError, LightHistogram, "x", "X.", [])
        self.assertRaises(ValueError, LightHistogram, "x", "X.", [1.0, 0.5])
        self.assertRaises(ValueError, LightHistogram, "x", "X.", [1.0, 1.0])


class NodeMetricsTests(SynchronousTestCase):
    """
    L{NodeMetrics} exports the per-frame and per-message counts under the
    names they always had.
    """

    def test_names(self) -> None:
        """
        Frame counts are labelled by frame type name, message counts by the
        labels the messaging layer gives each envelope kind.
        """
        metrics = NodeMetrics()
        metrics.frames_sent.add(6)
        metrics.frames_received.add(5, 2)
        metrics.frames_received.add(99)
        metrics.bytes_sent.value += 10
        metrics.bytes_received.value += 20
        metrics.message_labels = lambda kind: ("message", "unicast")
        metrics.messages_sent.add("m")
        metrics.messages_received.add("m")
        metrics.request_latency.observe(0.002)
        registry = metrics.registry

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        self.assertEqual(value("clustron_frames_sent_total", type="message"), 1)
        self.assertEqual(value("clustron_frames_received_total", type="heartbeat"), 2)
        self.assertEqual(value("clustron_frames_received_total", type="other"), 1)
        self.assertEqual(value("clustron_bytes_sent_total"), 10)
        self.assertEqual(value("clustron_bytes_received_total"), 20)
        self.assertEqual(
            value("clustron_messages_sent_total", kind="message", order="unicast"), 1
        )
        self.assertEqual(
            value("clustron_messages_received_total", kind="message", order="unicast"), 1
        )
        self.assertEqual(value("clustron_request_latency_seconds_count"), 1)
        self.assertIn(b"clustron_request_latency_seconds_bucket", generate_latest(registry))

    def test_sample(self) -> None:
        """
        L{sample} exports a value read when scraped.
        """
        metrics = NodeMetrics()
        box = [3]
        sample(metrics, "gauge", "clustron_x", "X.", lambda: box[0])
        box[0] = 4
        self.assertEqual(metrics.registry.get_sample_value("clustron_x"), 4)
