"""
Tests for the examples: C{examples/messaging_example.py} walks through the
messaging API on three nodes of the simulated network, and everything it
shows in the documentation holds.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from clustron.testkit.checkers import MessagingChecker
from clustron.testkit.cluster import SimCluster

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"examples_{name}", os.path.join(_EXAMPLES, f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


messaging_example = _load("messaging_example")


class MessagingExampleTests(SynchronousTestCase):
    """
    Three nodes run L{messaging_example.MessagingDemo} on the simulated
    network.
    """

    def setUp(self) -> None:
        # A small max_message_bytes keeps the oversized message cheap.
        self.cluster = SimCluster(
            3, seed=7, overrides={"messaging": {"max_message_bytes": 1_000_000}}
        )
        self.checker = MessagingChecker()
        self.lines: list[str] = []
        self.demos: dict[str, Any] = {}

        def attach(node: Any) -> None:
            self.checker.attach(node)
            self.demos[node.node_id] = messaging_example.MessagingDemo(
                node, expect=3, bulk=300, out=self.lines.append
            )

        self.cluster.on_node(attach)
        self.cluster.start()

    def walk(self) -> dict[str, Any]:
        """
        Run every node's walk to its end.

        @return: the summaries by node id.
        """
        outcomes: dict[str, Any] = {}
        for node_id, demo in self.demos.items():
            Deferred.fromCoroutine(demo.run()).addBoth(
                lambda result, node_id=node_id: outcomes.__setitem__(node_id, result)
            )
        self.assertTrue(self.cluster.run_until(lambda: len(outcomes) == 3, timeout=60))
        for outcome in outcomes.values():
            if isinstance(outcome, Failure):
                outcome.raiseException()
        return outcomes

    def test_walk(self) -> None:
        """
        Every call the example shows does what it says on every node.
        """
        summaries = self.walk()
        self.checker.assert_ok()
        for node_id, summary in summaries.items():
            others = sorted(n for n in self.cluster.node_ids if n != node_id)
            self.assertEqual(
                summary["replies"],
                {peer: {"hello": node_id, "from": peer} for peer in others},
            )
            self.assertEqual(
                summary["errors"],
                {
                    "handler_raised": ["RemoteError", "KeyError"],
                    "no_handler": ["RemoteError", "LookupError"],
                    "timeout": ["RequestTimeout"],
                    "unknown_member": ["UnknownMember"],
                    "too_large": ["MessageTooLarge"],
                    "reply_too_large": ["RemoteError", "MessageTooLarge"],
                },
            )
            self.assertTrue(summary["fifo_in_order"])
            self.assertTrue(summary["causal_answers_after_questions"])
            self.assertEqual(summary["bulk"], {"sent": 300, "refused": 0})
        orders = {tuple(s["total_order"]) for s in summaries.values()}
        self.assertEqual(len(orders), 1, orders)
        (order,) = orders
        self.assertEqual(
            sorted(order),
            sorted(f"{n}-{i}" for n in self.cluster.node_ids for i in range(3)),
        )

    def test_deliveries(self) -> None:
        """
        The handlers got the unicast notes, the large messages and the bulk
        sends; total-order positions increase on every node.
        """
        self.walk()
        self.cluster.run(1.0)
        notes = [d.received["notes"] for d in self.demos.values()]
        self.assertEqual(sum(len(n) for n in notes), 3)
        large = [entry for d in self.demos.values() for entry in d.received["large"]]
        self.assertEqual(
            sorted(large),
            sorted((n, messaging_example.LARGE_BYTES) for n in self.cluster.node_ids),
        )
        self.assertEqual(sum(len(d.received["bulk"]) for d in self.demos.values()), 900)
        for demo in self.demos.values():
            positions = [position for position, _, _ in demo.received["total"]]
            self.assertEqual(positions, sorted(positions))
            self.assertEqual(len(set(map(tuple, positions))), len(positions))
        self.assertIn("n1: done", self.lines)

    def test_invalid_config(self) -> None:
        """
        C{main} refuses an invalid configuration file with status 2, naming
        the bad key.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("cluster_id: demo\nnode_id: n1\nprofile: moon\n")
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(messaging_example.main([path]), 2)
        self.assertIn("profile", err.getvalue())
