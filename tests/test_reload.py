"""
Runtime configuration reload: reloadable keys apply, others are reported
and ignored, an invalid file changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from clustron.config import NodeConfig
from clustron.node import ClusterNode
from clustron.testkit.simnet import SimNetwork


class ReloadTests(TestCase):
    """
    L{ClusterNode.reload_config} on a node started from a file.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "node.yaml")
        self.doc: dict[str, Any] = {
            "cluster_id": "r",
            "node_id": "n1",
            "transport": "sim",
            "listen": "sim:7000",
            "advertise": "10.0.0.1:7000",
            "discovery": {"static": {"seeds": ["10.0.0.1:7000"]}},
            "failure_detector": {"suspect_after": 0.8, "dead_after": 1.6},
            "logging": {"level": "info"},
        }
        self.write()
        network = SimNetwork(Clock(), 1)
        self.node = ClusterNode(NodeConfig.from_file(self.path), reactor=network.host("10.0.0.1"))

    def write(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.doc, f)

    def reload(self) -> dict[str, Any]:
        results: list[Any] = []
        self.node.reload_config().addBoth(results.append)
        (result,) = results
        assert isinstance(result, dict), result
        return result

    def test_reloadable_keys_apply(self) -> None:
        self.doc["failure_detector"] = {"suspect_after": 1.2, "dead_after": 3.0}
        self.doc["discovery"] = {"static": {"seeds": ["10.0.0.1:7000", "10.0.0.2:7000"]}}
        self.write()
        result = self.reload()
        self.assertEqual(result["errors"], [])
        self.assertEqual(result["ignored"], [])
        self.assertIn("failure_detector.suspect_after", result["applied"])
        self.assertEqual(self.node.membership.detector.suspect_after, 1.2)
        self.assertEqual(self.node.membership.detector.dead_after, 3.0)
        self.assertEqual(self.node.config.failure_detector.dead_after, 3.0)
        self.assertEqual(
            self.node.discovery["static"].addresses(), {("10.0.0.1", 7000), ("10.0.0.2", 7000)}
        )

    def test_fixed_keys_reported_and_ignored(self) -> None:
        self.doc["priority"] = 7
        self.doc["failure_detector"] = {"suspect_after": 1.0, "dead_after": 2.0}
        self.write()
        result = self.reload()
        self.assertEqual(result["ignored"], ["priority"])
        self.assertEqual(self.node.config.priority, 0)
        self.assertEqual(self.node.membership.detector.suspect_after, 1.0)

    def test_invalid_file_changes_nothing(self) -> None:
        self.doc["failure_detector"] = {"suspect_after": 5.0, "dead_after": 1.0}
        self.doc["bogus_key"] = 1
        self.write()
        before = self.node.config
        result = self.reload()
        self.assertEqual(result["applied"], [])
        self.assertTrue(any("dead_after" in e for e in result["errors"]))
        self.assertTrue(any("bogus_key" in e for e in result["errors"]))
        self.assertIs(self.node.config, before)
        self.assertEqual(self.node.membership.detector.suspect_after, 0.8)

    def test_log_level_reloads(self) -> None:
        from twisted.logger import LogLevel

        from clustron.observability import logs

        self.addCleanup(logs.set_level, "info")
        self.doc["logging"] = {"level": "error"}
        self.write()
        result = self.reload()
        self.assertEqual(result["applied"], ["logging.level"])
        self.assertEqual(logs.level_filter.defaultLogLevel, LogLevel.error)
