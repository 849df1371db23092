"""
Tests for L{clustron.testkit.liveness}: what must happen after healing is
checked, and a broken node is caught.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from clustron.membership.view import ALIVE, Member, View
from clustron.messaging.message import Position
from clustron.testkit.checkers import MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.liveness import PROBE_TOPIC, LivenessChecker, check_liveness


def formed(size: int = 3, seed: int = 1) -> tuple[SimCluster, LivenessChecker, MessagingChecker]:
    cluster = SimCluster(size, seed=seed)
    membership = MembershipChecker(clock=cluster.clock)
    messaging = MessagingChecker(membership=membership, clock=cluster.clock)
    liveness = LivenessChecker(membership, clock=cluster.clock)
    for checker in (membership, messaging, liveness):
        cluster.on_node(checker.attach)
    cluster.start()
    assert cluster.run_until(cluster.converged, 5)
    cluster.run(0.5)
    return cluster, liveness, messaging


def drop_deliveries(node: Any, sender: str, order: str) -> None:
    """
    Make C{node} silently lose what C{sender} broadcasts in C{order}: a
    stand-in for a delivery bug.
    """
    handle = node.messenger._handle
    kinds = {"fifo": "b", "causal": "c", "total": "t"}

    def lossy(from_node: str, msg_id: Any, kind: str, *args: Any, **kwargs: Any) -> None:
        if from_node == sender and kind == kinds[order]:
            return
        handle(from_node, msg_id, kind, *args, **kwargs)

    node.messenger._handle = lossy


class HealthyTests(SynchronousTestCase):
    def test_quiet_cluster_passes(self) -> None:
        cluster, liveness, messaging = formed()
        for node in cluster.live():
            for order in ("fifo", "causal", "total"):
                liveness.broadcast(node, "t", node.node_id, order)
        self.assertEqual(check_liveness(cluster, liveness, bound=5, probe_time=5), [])
        messaging.assert_ok()
        self.assertEqual({b.outcome for b in liveness.broadcasts.values()}, {"ok"})

    def test_crashed_node_is_not_owed_and_must_be_dead(self) -> None:
        cluster, liveness, _ = formed(5)
        liveness.broadcast(cluster.nodes["n1"], "t", "before", "fifo")
        cluster.crash("n4")
        liveness.broadcast(cluster.nodes["n1"], "t", "after", "fifo")
        self.assertEqual(check_liveness(cluster, liveness, bound=10, probe_time=5), [])
        self.assertFalse(cluster.nodes["n1"].view.is_active_member("n4"))  # type: ignore[union-attr]

    def test_short_partition_messages_owed_and_delivered(self) -> None:
        cluster, liveness, _ = formed(5)
        cluster.partition(["n1", "n2", "n3"], ["n4", "n5"])
        for order in ("fifo", "causal", "total"):
            liveness.broadcast(cluster.nodes["n1"], "t", order, order)
        cluster.run(0.5)
        cluster.heal()
        self.assertEqual(check_liveness(cluster, liveness, bound=10, probe_time=8), [])


class BrokenTests(SynchronousTestCase):
    def test_lost_probe_caught(self) -> None:
        cluster, liveness, _ = formed()
        drop_deliveries(cluster.nodes["n2"], "n1", "fifo")
        violations = check_liveness(cluster, liveness, bound=5, probe_time=3)
        self.assertEqual(len(violations), 1, violations)
        self.assertRegex(
            violations[0], r"fifo probe n1:\d+:\d+ of n1 not delivered to n2 within 3 s"
        )

    def test_lost_owed_broadcast_caught(self) -> None:
        cluster, liveness, _ = formed()
        drop_deliveries(cluster.nodes["n3"], "n1", "causal")
        liveness.broadcast(cluster.nodes["n1"], "t", "x", "causal")
        cluster.run(1)
        violations = check_liveness(cluster, liveness, bound=5, probe_time=3)
        self.assertEqual(len(violations), 2, violations)
        self.assertRegex(violations[0], r"causal probe n1:\d+:\d+ of n1 not delivered to n3")
        self.assertRegex(
            violations[1],
            r"causal broadcast n1:\d+:\d+ of n1 \(sent at t=0.703\) was never delivered to n3, "
            "which stayed in the sender's view",
        )

    def test_total_broadcast_never_completed_caught(self) -> None:
        cluster, liveness, _ = formed()
        cluster.nodes["n1"].messenger.total._forward = lambda item: None
        liveness.broadcast(cluster.nodes["n1"], "t", "lost", "total")
        violations = check_liveness(cluster, liveness, bound=5, probe_time=3)
        self.assertTrue(
            any(
                "never completed: its sender is alive but never delivered it" in v
                for v in violations
            ),
            violations,
        )

    def test_wrong_reply_caught(self) -> None:
        cluster, liveness, _ = formed()
        node = cluster.nodes["n2"]
        real = node.on_message

        def wrong(topic: str, handler: Any) -> None:
            real(topic, (lambda message: "nonsense") if topic == PROBE_TOPIC else handler)

        node.on_message = wrong  # type: ignore[method-assign]
        violations = check_liveness(cluster, liveness, bound=5, probe_time=3)
        self.assertTrue(any("got a wrong reply 'nonsense'" in v for v in violations), violations)

    def test_no_quorum_after_heal_caught(self) -> None:
        cluster, liveness, _ = formed(3)
        cluster.crash("n2")
        cluster.crash("n3")
        violations = check_liveness(cluster, liveness, bound=4, probe_time=1)
        self.assertEqual(len(violations), 1)
        self.assertIn("no single view with an acting coordinator", violations[0])
        self.assertIn("n1: 1.", violations[0])


class AgreementTests(SynchronousTestCase):
    """
    Members that stayed in the view must agree on every total-order epoch
    (fed synthetic deliveries).
    """

    def make(self, name: str) -> Any:
        node = SimpleNamespace(
            node_id=name,
            reactor=SimpleNamespace(seconds=lambda: 0.0),
            messenger=SimpleNamespace(incarnation=1, observers=[]),
            membership=SimpleNamespace(observers=[], view=None),
            subscribe=lambda callback: None,
        )
        self.liveness.attach(node)
        return node

    def setUp(self) -> None:
        self.membership = MembershipChecker()
        self.liveness = LivenessChecker(self.membership)
        self.nodes = [self.make(n) for n in ("n1", "n2", "n3")]
        self.cluster = SimpleNamespace(live=lambda: self.nodes)
        members = tuple(Member(n, "a:1", 1, 0, ALIVE, False, "") for n in ("n1", "n2", "n3"))
        self.membership.installed.append((1.0, View(1, 0, "n1", members)))

    def deliver(self, node: Any, epoch: int, seq: int) -> None:
        for observer in node.messenger.observers:
            observer(
                "deliver",
                {
                    "id": f"x:{epoch}:{seq}",
                    "order": "total",
                    "position": Position(epoch, seq),
                    "time": 2.0,
                },
            )

    def test_agreement(self) -> None:
        for node in self.nodes:
            self.deliver(node, 1, 1)
        self.assertEqual(self.liveness.total_agreement_violations(self.cluster), [])
        self.deliver(self.nodes[0], 1, 2)
        (violation,) = self.liveness.total_agreement_violations(self.cluster)
        self.assertEqual(
            violation,
            "total order epoch 1: members that stayed in the view delivered different "
            "positions: n1 has 2 (misses none); n2,n3 have 1 (miss [2])",
        )

    def test_member_that_left_the_view_is_not_held_to_it(self) -> None:
        members = tuple(Member(n, "a:1", 1, 0, ALIVE, False, "") for n in ("n1", "n2"))
        self.membership.installed.append((3.0, View(1, 1, "n1", members)))
        self.deliver(self.nodes[0], 1, 1)
        self.deliver(self.nodes[1], 1, 1)
        self.assertEqual(self.liveness.total_agreement_violations(self.cluster), [])
