"""
Messaging on whole simulated clusters: request/response, reliable FIFO,
causal and total order under loss, duplication, reordering, crashes and
partitions, checked after every delivery by L{MessagingChecker}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import (
    MessageTooLarge,
    NotJoined,
    QueueFull,
    RemoteError,
    RequestTimeout,
    UnknownMember,
)
from clustron.testkit.checkers import MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster


def formed(
    size: int = 3, seed: int = 1, **kwargs: Any
) -> tuple[SimCluster, MessagingChecker, MembershipChecker]:
    cluster = SimCluster(size, seed=seed, **kwargs)
    messages = MessagingChecker()
    membership = MembershipChecker()
    cluster.on_node(messages.attach)
    cluster.on_node(membership.attach)
    cluster.start()
    assert cluster.run_until(cluster.converged, timeout=3.0)
    # Let the first total-order epoch open (the flush) before testing.
    cluster.run(0.5)
    return cluster, messages, membership


def collect(cluster: SimCluster, topic: str = "t") -> dict[str, list[Any]]:
    received: dict[str, list[Any]] = {n: [] for n in cluster.node_ids}
    for node_id, node in cluster.nodes.items():
        node.on_message(topic, lambda m, node_id=node_id: received[node_id].append(m))
    return received


def lossy(
    cluster: SimCluster, loss: float = 0.0, duplicate: float = 0.0, reorder: bool = False
) -> None:
    for a in cluster.node_ids:
        for b in cluster.node_ids:
            if a != b:
                cluster.network.set_link(
                    cluster.host_of(a),
                    cluster.host_of(b),
                    loss=loss,
                    duplicate=duplicate,
                    reorder=reorder,
                    delay=lambda rng: rng.uniform(0.0005, 0.02),
                )


class RequestTests(SynchronousTestCase):
    """
    Request/response and unicast sends.
    """

    def test_request_reply(self) -> None:
        cluster, checker, _ = formed()
        cluster.nodes["n2"].on_message("add", lambda m: m.body["a"] + m.body["b"])
        results: list[Any] = []
        cluster.nodes["n1"].request("n2", "add", {"a": 2, "b": 3}).addBoth(results.append)
        cluster.run(0.2)
        self.assertEqual(results, [5])
        checker.assert_ok()

    def test_handler_deferred_reply(self) -> None:
        cluster, _, _ = formed()
        from twisted.internet.task import deferLater

        host = cluster.nodes["n2"].reactor
        cluster.nodes["n2"].on_message("slow", lambda m: deferLater(host, 0.5, lambda: "done"))
        results: list[Any] = []
        cluster.nodes["n1"].request("n2", "slow", None).addBoth(results.append)
        cluster.run(1)
        self.assertEqual(results, ["done"])

    def test_remote_error(self) -> None:
        cluster, _, _ = formed()

        def fail(message: Any) -> None:
            raise KeyError("no such account")

        cluster.nodes["n2"].on_message("boom", fail)
        results: list[Any] = []
        cluster.nodes["n1"].request("n2", "boom", None).addErrback(results.append)
        cluster.run(0.2)
        error = results[0].value
        self.assertIsInstance(error, RemoteError)
        self.assertEqual(error.type_name, "KeyError")
        self.assertIn("no such account", error.message)

    def test_unknown_member(self) -> None:
        cluster, _, _ = formed()
        results: list[Any] = []
        cluster.nodes["n1"].request("n9", "x", None).addErrback(results.append)
        cluster.nodes["n1"].send("n9", "x", None).addErrback(results.append)
        self.assertEqual([f.type for f in results], [UnknownMember, UnknownMember])

    def test_request_timeout(self) -> None:
        cluster, _, _ = formed()
        cluster.nodes["n2"].on_message("echo", lambda m: m.body)
        cluster.network.cut_one_way(cluster.host_of("n2"), cluster.host_of("n1"))
        results: list[Any] = []
        cluster.nodes["n1"].request("n2", "echo", 1, timeout=0.5).addErrback(results.append)
        cluster.run(0.6)
        self.assertEqual(results[0].type, RequestTimeout)

    def test_request_deadlines(self) -> None:
        """
        Each request times out at its own deadline, whatever the order they
        were made in; an answered or cancelled request never times out; and
        answered requests leave no deadline behind to pile up.
        """
        cluster, _, _ = formed()
        n1 = cluster.nodes["n1"]
        cluster.nodes["n2"].on_message("echo", lambda m: m.body)
        for n in range(500):
            n1.request("n2", "echo", n, timeout=5.0)
            cluster.run(0.001)
        cluster.run(0.2)
        self.assertLess(len(n1.messenger._deadlines), 200)
        cluster.network.cut_one_way(cluster.host_of("n2"), cluster.host_of("n1"))
        start = cluster.clock.seconds()
        times: dict[str, float] = {}

        def timed_out(failure: Any, name: str) -> None:
            failure.trap(RequestTimeout)
            times[name] = cluster.clock.seconds() - start

        n1.request("n2", "echo", 1, timeout=2.0).addErrback(timed_out, "long")
        n1.request("n2", "echo", 2, timeout=0.5).addErrback(timed_out, "short")
        cancelled = n1.request("n2", "echo", 3, timeout=0.3)
        cancelled.addErrback(lambda f: None)
        cancelled.cancel()
        cluster.run(2.5)
        self.assertEqual(sorted(times), ["long", "short"])
        self.assertAlmostEqual(times["short"], 0.5, delta=0.01)
        self.assertAlmostEqual(times["long"], 2.0, delta=0.01)
        self.assertEqual(n1.messenger._requests, {})

    def test_not_joined(self) -> None:
        cluster = SimCluster(3, seed=1, overrides={"membership": {"bootstrap_expect": 3}})
        cluster.start(["n1"])
        results: list[Any] = []
        cluster.nodes["n1"].broadcast("t", 1).addErrback(results.append)
        self.assertEqual(results[0].type, NotJoined)

    def test_request_to_self(self) -> None:
        cluster, _, _ = formed()
        cluster.nodes["n1"].on_message("echo", lambda m: ["me", m.sender])
        results: list[Any] = []
        cluster.nodes["n1"].request("n1", "echo", None).addBoth(results.append)
        cluster.run(0.1)
        self.assertEqual(results, [["me", "n1"]])

    def test_message_fields(self) -> None:
        cluster, _, _ = formed()
        received = collect(cluster)
        cluster.nodes["n1"].send("n2", "t", {"x": 1})
        cluster.run(0.2)
        (message,) = received["n2"]
        self.assertEqual((message.topic, message.body, message.sender), ("t", {"x": 1}, "n1"))
        self.assertEqual(message.id.node_id, "n1")
        self.assertEqual(message.order, "unicast")


class ReliabilityTests(SynchronousTestCase):
    """
    Reliable FIFO delivery under loss, duplication and reordering.
    """

    def test_fifo_broadcast_under_faults(self) -> None:
        cluster, checker, membership = formed(seed=4)
        received = collect(cluster)
        lossy(cluster, loss=0.2, duplicate=0.1, reorder=True)
        done: list[Any] = []
        for i in range(50):
            cluster.nodes["n1"].broadcast("t", i).addBoth(done.append)
            cluster.nodes["n2"].broadcast("t", 100 + i).addBoth(done.append)
            cluster.run(0.01)
        cluster.run(10)
        self.assertEqual(done, [None] * 100)
        for node_id in cluster.node_ids:
            from_n1 = [m.body for m in received[node_id] if m.sender == "n1"]
            from_n2 = [m.body for m in received[node_id] if m.sender == "n2"]
            self.assertEqual(from_n1, list(range(50)))
            self.assertEqual(from_n2, list(range(100, 150)))
        checker.assert_ok()
        membership.assert_ok()

    def test_unreliable_broadcast_may_drop_but_never_duplicates(self) -> None:
        cluster, checker, _ = formed()
        received = collect(cluster)
        lossy(cluster, loss=0.3, duplicate=0.3)
        for i in range(100):
            cluster.nodes["n1"].broadcast("t", i, reliable=False)
        cluster.run(2)
        for node_id in ("n2", "n3"):
            bodies = [m.body for m in received[node_id]]
            self.assertEqual(len(bodies), len(set(bodies)))
            self.assertLess(len(bodies), 100)
        self.assertEqual(len(received["n1"]), 100)
        checker.assert_ok()

    def test_cancelled_send_stops(self) -> None:
        """
        Cancelling a send's Deferred stops its retransmissions, and the
        messages after it on the same stream are delivered all the same.
        """
        cluster, _, _ = formed()
        received = collect(cluster)
        n1 = cluster.nodes["n1"]
        cluster.network.cut_one_way(cluster.host_of("n1"), cluster.host_of("n2"))
        d = n1.send("n2", "t", "lost")
        d.addErrback(lambda f: f.trap(CancelledError))
        cluster.run(0.05)
        self.assertEqual(n1.messenger._sender.in_flight("n2"), 1)
        d.cancel()
        self.assertEqual(n1.messenger._sender.in_flight("n2"), 0)
        cluster.network.heal()
        done: list[Any] = []
        n1.send("n2", "t", "after").addBoth(done.append)
        cluster.run(1)
        self.assertEqual(done, [None])
        self.assertEqual([m.body for m in received["n2"]], ["after"])

    def test_send_to_dead_member_fails(self) -> None:
        cluster, _, _ = formed()
        cluster.partition(["n1", "n2", "n3"])
        cluster.network.isolate(cluster.host_of("n3"))
        results: list[Any] = []
        cluster.nodes["n1"].send("n3", "t", "hello?").addErrback(results.append)
        cluster.run(5)
        self.assertEqual(results[0].type.__name__, "DeliveryFailed")


class CausalTests(SynchronousTestCase):
    """
    Causal broadcast under reordering delays.
    """

    def test_replies_never_overtake_questions(self) -> None:
        cluster, checker, _ = formed(size=4, seed=7)
        lossy(cluster, loss=0.1, reorder=True)
        received = collect(cluster)
        # Every node answers each question it receives with a causal reply.
        for node_id, node in cluster.nodes.items():

            def answer(message: Any, node: Any = node, node_id: str = node_id) -> None:
                received[node_id].append(message)
                if (
                    isinstance(message.body, str)
                    and message.body.startswith("q")
                    and message.sender != node_id
                ):
                    node.broadcast("t", f"re:{message.body}:{node_id}", order="causal")

            node.on_message("t", answer)
        for i in range(10):
            cluster.nodes["n1"].broadcast("t", f"q{i}", order="causal")
            cluster.run(0.05)
        cluster.run(10)
        for node_id in cluster.node_ids:
            bodies = [m.body for m in received[node_id]]
            for body in bodies:
                if body.startswith("re:"):
                    question = body.split(":")[1]
                    self.assertLess(bodies.index(question), bodies.index(body))
            self.assertEqual(len(bodies), 10 + 10 * 3)
        checker.assert_ok()


class TotalOrderTests(SynchronousTestCase):
    """
    Total order: one sequence everywhere, through coordinator failure.
    """

    def test_concurrent_senders_same_sequence(self) -> None:
        cluster, checker, _ = formed(size=4, seed=9)
        lossy(cluster, loss=0.1, duplicate=0.05, reorder=True)
        received = collect(cluster)
        for i in range(30):
            for node_id in cluster.node_ids:
                cluster.nodes[node_id].broadcast("t", f"{node_id}-{i}", order="total")
            cluster.run(0.01)
        cluster.run(10)
        sequences = {n: [m.body for m in received[n]] for n in cluster.node_ids}
        self.assertEqual(len(sequences["n1"]), 120)
        for node_id in cluster.node_ids:
            self.assertEqual(sequences[node_id], sequences["n1"])
        checker.assert_ok()

    def test_coordinator_crash_mid_stream(self) -> None:
        """
        The coordinator dies while sequencing; the flush keeps every
        survivor's sequence identical, and every message of a surviving
        sender is delivered exactly once.
        """
        cluster, checker, membership = formed(size=5, seed=5)
        received = collect(cluster)
        done: list[Any] = []
        for i in range(40):
            for node_id in ("n1", "n2", "n3"):
                cluster.nodes[node_id].broadcast("t", f"{node_id}-{i}", order="total").addBoth(
                    done.append
                )
            cluster.run(0.005)
            if i == 20:
                cluster.crash("n5")
        cluster.run(15)
        survivors = ["n1", "n2", "n3", "n4"]
        sequences = {n: [m.body for m in received[n]] for n in survivors}
        for node_id in survivors:
            self.assertEqual(sequences[node_id], sequences["n1"])
        self.assertEqual(
            sorted(sequences["n1"]),
            sorted(f"{n}-{i}" for n in ("n1", "n2", "n3") for i in range(40)),
        )
        self.assertEqual(done, [None] * 120)
        positions = [(m.position.epoch, m.position.seq) for m in received["n1"]]
        self.assertEqual(positions, sorted(positions))
        checker.assert_ok()
        membership.assert_ok()

    def test_no_sequencing_without_quorum(self) -> None:
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        cluster.partition(["n1", "n2"], ["n3", "n4", "n5"])
        cluster.run(4)
        done: list[Any] = []
        cluster.nodes["n1"].broadcast("t", "minority", order="total").addBoth(done.append)
        cluster.run(2)
        self.assertEqual(received["n1"], [])
        self.assertEqual(done, [])
        cluster.heal()
        cluster.run(8)
        self.assertTrue(cluster.converged())
        # Sequenced once the message reached the majority's coordinator,
        # and delivered by the members of that view.
        self.assertEqual(done, [None])
        for node_id in ("n3", "n4", "n5"):
            self.assertEqual([m.body for m in received[node_id]], ["minority"])
        # After rejoining, n1 takes part in the total order again.
        cluster.nodes["n2"].broadcast("t", "after", order="total")
        cluster.run(1)
        for node_id in cluster.node_ids:
            self.assertEqual(received[node_id][-1].body, "after")
        checker.assert_ok()


class SizeAndBackPressureTests(SynchronousTestCase):
    """
    Large messages are fragmented without starving heartbeats; oversize
    fails at send; slow peers push back with a clear error.
    """

    def test_large_message_fragmented_heartbeats_flow(self) -> None:
        cluster, checker, _ = formed(overrides={"messaging": {"max_message_bytes": 8_000_000}})
        received = collect(cluster)
        suspicions: list[Any] = []
        for node in cluster.live():
            node.subscribe(
                lambda e: suspicions.append(e) if e["type"] == "member_suspected" else None
            )
        body = "x" * 5_000_000
        done: list[Any] = []
        cluster.nodes["n1"].send("n2", "t", body).addBoth(done.append)
        cluster.run(5)
        self.assertEqual(done, [None])
        self.assertEqual(len(received["n2"][0].body), 5_000_000)
        self.assertEqual(suspicions, [])
        checker.assert_ok()

    def test_oversize_fails_at_send(self) -> None:
        cluster, _, _ = formed(overrides={"messaging": {"max_message_bytes": 1000}})
        results: list[Any] = []
        cluster.nodes["n1"].send("n2", "t", "x" * 2000).addErrback(results.append)
        cluster.nodes["n1"].broadcast("t", "x" * 2000, order="total").addErrback(results.append)
        self.assertEqual([f.type for f in results], [MessageTooLarge, MessageTooLarge])
        self.assertIn("max_message_bytes=1000", str(results[0].value))

    def test_back_pressure_queue_full(self) -> None:
        cluster, _, _ = formed(overrides={"messaging": {"max_in_flight": 8}})
        cluster.network.cut_one_way(cluster.host_of("n1"), cluster.host_of("n2"))
        cluster.network.cut_one_way(cluster.host_of("n2"), cluster.host_of("n1"))
        results: list[Any] = []
        for i in range(20):
            cluster.nodes["n1"].send("n2", "t", i).addErrback(results.append)
        full = [f for f in results if f.check(QueueFull)]
        self.assertEqual(len(full), 4)
        self.assertIn("n2", str(full[0].value))


class ForgedTotalOrderTests(SynchronousTestCase):
    """
    Only an epoch's coordinator may sequence, flush or open it.
    """

    def test_member_cannot_inject_positions(self) -> None:
        cluster, checker, _ = formed(seed=6)
        received = collect(cluster)
        view = cluster.nodes["n1"].view
        assert view is not None
        forged = ["n1:0:999", "n1", "t", "forged", None]
        n1 = cluster.nodes["n1"].messenger
        n1._send_control("n2", {"k": "ts", "e": [view.epoch, 1, *forged]})
        n1._send_control("n2", {"k": "tq", "epoch": view.epoch + 5})
        n1._send_control("n2", {"k": "to", "epoch": view.epoch + 5, "fill": []})
        cluster.run(1)
        self.assertEqual(received["n2"], [])
        # The real order still works on n2.
        cluster.nodes["n3"].broadcast("t", "real", order="total")
        cluster.run(1)
        self.assertEqual([m.body for m in received["n2"]], ["real"])
        checker.assert_ok()
