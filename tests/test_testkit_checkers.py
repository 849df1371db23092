"""
The checkers of L{clustron.testkit.checkers} fail when a promise is broken:
each test feeds them the events of a broken run and reads the violation.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from clustron.membership.view import ALIVE, Member, View
from clustron.messaging.message import Position
from clustron.testkit.checkers import InvariantViolation, MembershipChecker, MessagingChecker


def view(epoch: int, seq: int, coordinator: str, *members: str) -> View:
    return View(
        epoch,
        seq,
        coordinator,
        tuple(Member(m, f"10.0.0.{m[1:]}:7000", 1, 0, ALIVE, False, "") for m in members),
    )


class FakeNode:
    """
    Just the observer lists the checkers attach to, and what the
    sequencing check reads.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.membership = SimpleNamespace(
            observers=[], view=None, joined=True, acting=True, node_id=node_id
        )
        self.messenger = SimpleNamespace(observers=[])

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.subscribers.append(callback)

    def member_event(self, kind: str, **fields: Any) -> None:
        fields.setdefault("time", 1.0)
        for observer in self.membership.observers:
            observer(kind, fields)

    def message_event(self, kind: str, **fields: Any) -> None:
        fields.setdefault("time", 1.0)
        for observer in self.messenger.observers:
            observer(kind, fields)

    def left(self) -> None:
        for callback in self.subscribers:
            callback({"type": "left_cluster", "time": 1.0})


class MembershipCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = MembershipChecker()
        self.a, self.b = FakeNode("n1"), FakeNode("n2")
        self.checker.attach(self.a)
        self.checker.attach(self.b)

    def install(
        self, node: FakeNode, v: View, present: int = 3, base: int = 3, acting: bool = True
    ) -> None:
        node.member_event(
            "install", view=v, present=present, base=base, required=base // 2 + 1, acting=acting
        )

    def test_clean_run(self) -> None:
        self.a.member_event("elected", epoch=1)
        self.install(self.a, view(1, 0, "n1", "n1", "n2", "n3"))
        self.b.member_event("accept", view=view(1, 0, "n1", "n1", "n2", "n3"))
        self.checker.assert_ok()
        self.assertEqual(self.checker.coordinators, {1: "n1"})
        self.assertEqual(len(self.checker.installed), 1)

    def test_two_coordinators_one_epoch(self) -> None:
        self.a.member_event("elected", epoch=2)
        self.b.member_event("elected", epoch=2)
        self.assertIn("split brain: n2 and n1 both coordinate epoch 2", self.checker.violations[0])
        self.assertRaises(InvariantViolation, self.checker.assert_ok)

    def test_install_without_quorum(self) -> None:
        self.install(self.a, view(1, 1, "n1", "n1", "n2"), present=2, base=5)
        self.assertIn("without quorum (2 of 5 reachable, 3 needed)", self.checker.violations[0])

    def test_install_while_not_acting(self) -> None:
        self.install(self.a, view(1, 1, "n1", "n1", "n2"), acting=False)
        self.assertIn("without quorum", self.checker.violations[0])

    def test_majority_held_even_with_quorum_none(self) -> None:
        self.a.member_event(
            "install", view=view(1, 1, "n1", "n1"), present=1, base=3, required=1, acting=True
        )
        self.assertFalse(self.checker.ok)
        lax = MembershipChecker(majority=False)
        node = FakeNode("n1")
        lax.attach(node)
        node.member_event(
            "install", view=view(1, 1, "n1", "n1"), present=1, base=3, required=1, acting=True
        )
        self.assertTrue(lax.ok)

    def test_epoch_goes_back(self) -> None:
        self.b.member_event("accept", view=view(3, 0, "n1", "n1", "n2"))
        self.b.member_event("accept", view=view(2, 5, "n1", "n1", "n2"))
        self.assertIn("went back from epoch 3 to 2", self.checker.violations[0])

    def test_one_view_id_two_member_sets(self) -> None:
        self.a.member_event("accept", view=view(1, 1, "n1", "n1", "n2"))
        self.b.member_event("accept", view=view(1, 1, "n1", "n1", "n2", "n3"))
        self.assertIn("view 1.1 at n2 has members", self.checker.violations[0])


class MessagingCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.membership = MembershipChecker()
        self.checker = MessagingChecker(membership=self.membership)
        self.a, self.b = FakeNode("n1"), FakeNode("n2")
        for node in (self.a, self.b):
            self.membership.attach(node)
            self.checker.attach(node)

    def deliver(
        self, node: FakeNode, msg_id: str, order: str, position: tuple[int, int] | None = None
    ) -> None:
        node.message_event(
            "deliver",
            id=msg_id,
            order=order,
            sender=msg_id.split(":")[0],
            position=Position(*position) if position else None,
        )

    def test_duplicate(self) -> None:
        self.deliver(self.a, "n2:1:1", "fifo")
        self.deliver(self.a, "n2:1:1", "fifo")
        self.assertIn("n1 delivered n2:1:1 twice", self.checker.violations[0])

    def test_fifo(self) -> None:
        self.deliver(self.a, "n2:1:2", "fifo")
        self.deliver(self.a, "n2:1:1", "unicast")
        self.assertIn("FIFO broken", self.checker.violations[0])
        # Another life of the sender is another stream.
        self.deliver(self.a, "n2:5:1", "fifo")
        self.assertEqual(len(self.checker.violations), 1)

    def test_causal(self) -> None:
        # n2 delivers q, then broadcasts r, which depends on q.
        self.b.message_event("broadcast", id="n1:1:1", order="causal")
        self.deliver(self.b, "n1:1:1", "causal")
        self.b.message_event("broadcast", id="n2:1:1", order="causal")
        self.deliver(self.a, "n2:1:1", "causal")
        self.deliver(self.a, "n1:1:1", "causal")
        self.assertIn("causal order broken", self.checker.violations[0])

    def test_total_conflict_gap_regression(self) -> None:
        self.deliver(self.a, "n1:1:1", "total", (1, 1))
        self.deliver(self.b, "n2:1:1", "total", (1, 1))
        self.assertIn("total order broken", self.checker.violations[0])
        self.deliver(self.a, "n1:1:3", "total", (1, 3))
        self.assertIn("without leaving the view in between (gap)", self.checker.violations[1])
        self.deliver(self.a, "n1:1:4", "total", (1, 2))
        self.assertIn("(regression)", self.checker.violations[2])

    def test_one_message_two_positions(self) -> None:
        self.deliver(self.a, "n1:1:1", "total", (2, 1))
        self.deliver(self.b, "n1:1:1", "total", (3, 1))
        self.assertIn(
            "n2 delivered n1:1:1 at (3, 1), but it was delivered at (2, 1) elsewhere",
            self.checker.violations[0],
        )

    def test_gap_allowed_after_leaving(self) -> None:
        self.deliver(self.a, "n1:1:1", "total", (1, 1))
        self.a.left()
        self.deliver(self.a, "n1:1:7", "total", (1, 7))
        self.assertEqual(self.checker.violations, [])
        self.deliver(self.a, "n1:1:9", "total", (1, 9))
        self.assertIn("(gap)", self.checker.violations[0])

    def test_sequencing_needs_acting_coordinator_of_the_epoch(self) -> None:
        self.a.membership.view = view(2, 0, "n1", "n1", "n2", "n3")
        self.a.message_event("total_sequence", id="n2:1:1", position=Position(2, 1))
        self.assertEqual(self.checker.violations, [])
        self.a.membership.acting = False
        self.a.message_event("total_sequence", id="n2:1:2", position=Position(2, 2))
        self.assertIn("while not acting", self.checker.violations[0])
        self.a.membership.acting = True
        self.a.message_event("total_sequence", id="n2:1:3", position=Position(3, 1))
        self.assertIn("its view 2.0 is coordinated by n1", self.checker.violations[1])
        self.b.member_event("elected", epoch=2)
        self.a.message_event("total_sequence", id="n2:1:4", position=Position(2, 3))
        self.assertIn("but n2 coordinates epoch 2", self.checker.violations[-1])

    def test_sequencing_outside_a_view(self) -> None:
        self.a.membership.joined = False
        self.a.message_event("total_sequence", id="n2:1:1", position=Position(1, 1))
        self.assertIn("while not a member of a view", self.checker.violations[0])
