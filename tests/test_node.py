"""
The embedding API of L{ClusterNode} and the documents it serves.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import clustron
from clustron.admin.api import IAdminTarget
from clustron.testkit.cluster import SimCluster


class NodeTests(SynchronousTestCase):
    """
    A node in a simulated 3-node cluster.
    """

    def setUp(self) -> None:
        self.cluster = SimCluster(3, seed=1)
        self.cluster.start()
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 3))
        self.node = self.cluster.nodes["n1"]

    def test_admin_target(self) -> None:
        self.assertTrue(verifyObject(IAdminTarget, self.node))

    def test_cluster_document_shape(self) -> None:
        """
        C{GET /v1/cluster} has the shape DESIGN section 6 promises.
        """
        doc = self.node.status()
        for key in ("cluster_id", "node_id", "incarnation", "view", "quorum", "peers"):
            self.assertIn(key, doc)
        self.assertEqual((doc["cluster_id"], doc["node_id"]), ("sim", "n1"))
        view = doc["view"]
        self.assertEqual(view["coordinator"], "n3")
        self.assertEqual(set(view), {"epoch", "seq", "coordinator", "members"})
        member = view["members"][0]
        for key in ("node_id", "address", "state", "incarnation", "draining", "reason"):
            self.assertIn(key, member)
        self.assertEqual([m["state"] for m in view["members"]], ["alive"] * 3)
        self.assertEqual(
            doc["quorum"], {"mode": "majority", "required": 2, "present": 3, "has_quorum": True}
        )
        self.assertEqual(
            [(p["node_id"], p["connected"]) for p in doc["peers"]], [("n2", True), ("n3", True)]
        )
        self.assertEqual(doc["peers"][0]["address"], "10.0.0.2:7000")

    def test_health(self) -> None:
        self.assertEqual(
            self.node.health(),
            {
                "status": "ok",
                "node_id": "n1",
                "joined": True,
                "has_quorum": True,
                "peers_connected": 2,
            },
        )

    def test_health_degraded_without_quorum(self) -> None:
        self.cluster.network.isolate(self.cluster.host_of("n1"))
        self.cluster.run(3)
        health = self.node.health()
        self.assertEqual(health["status"], "degraded")

    def test_when_joined_fires_with_view(self) -> None:
        views: list[Any] = []
        self.node.when_joined().addCallback(views.append)
        self.assertEqual(views[0].coordinator, "n3")

    def test_events(self) -> None:
        events: list[dict[str, Any]] = []
        self.node.subscribe(events.append)
        self.cluster.crash("n2")
        self.cluster.run(3)
        died = [e for e in events if e["type"] == "member_died"]
        self.assertEqual(died[0]["node_id"], "n2")
        self.assertIn("refused", died[0]["reason"])

    def test_public_api(self) -> None:
        for name in clustron.__all__:
            self.assertTrue(hasattr(clustron, name), name)
        self.assertIs(clustron.ClusterNode, type(self.node))
