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
    DeliveryFailed,
    MessageTooLarge,
    NotJoined,
    QueueFull,
    RemoteError,
    RequestTimeout,
    UnknownMember,
)
from clustron.testkit.checkers import MembershipChecker, MessagingChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.scenarios import run_seed


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

    def test_restarted_peer_gets_a_new_stream(self) -> None:
        """
        When a member's process restarts while it stays in the view, what
        was in flight to the old process fails with L{DeliveryFailed} and
        the stream to the new one starts a new generation.
        """
        cluster, _, _ = formed()
        messenger = cluster.nodes["n1"].messenger
        view = cluster.nodes["n1"].view
        assert view is not None
        lives = {node: cluster.nodes["n1"].membership.life_of(node) for node in view.active_ids()}
        self.assertNotIn(None, lives.values())
        cluster.network.cut_one_way(cluster.host_of("n1"), cluster.host_of("n3"))
        results: list[Any] = []
        cluster.nodes["n1"].send("n3", "t", "for the old process").addErrback(results.append)
        before = messenger._fifo_out.stamp("n3")
        renewed = dict(lives, n3=lives["n3"] + 1)
        messenger.view_changed(view, cluster.nodes["n1"].membership.acting, None, renewed)
        self.assertEqual([f.type for f in results], [DeliveryFailed])
        self.assertIn("restarted", str(results[0].value))
        after = messenger._fifo_out.stamp("n3")
        self.assertGreater(after.stream_id, before.stream_id)
        self.assertEqual(after.seq, 1)
        # The same life again changes nothing.
        messenger.view_changed(view, cluster.nodes["n1"].membership.acting, None, renewed)
        self.assertEqual(messenger._fifo_out.stamp("n3").stream_id, after.stream_id)

    def test_restart_seed_regression(self) -> None:
        """
        The seed that found it: n1 crashed right after acknowledging a
        message of n5's stream out of order and came back without ever
        leaving n5's view; carried on, the stream kept the new process
        waiting for that message for good.
        """
        result = run_seed("mixed", 1053, nodes=5, duration=6.0)
        self.assertEqual(result.violations, [])

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


    def test_stream_resumes_after_receiver_dropped_sender(self) -> None:
        """
        A receiver that removes a sender from its view keeps that sender's
        stream: the messages it took out of order (and acknowledged, so
        never transmitted again) are still delivered, in order, when the
        sender, which never saw the receiver leave, carries on with the
        same stream after the partition heals.
        """
        cluster, checker, membership = formed(size=3, seed=1)
        received = collect(cluster)
        sender, receiver = cluster.nodes["n1"], cluster.nodes["n2"]
        results: list[Any] = []
        # The first message is lost; the next two arrive and are buffered.
        cluster.cut_one_way("n1", "n2")
        sender.send("n2", "t", 1).addBoth(results.append)
        cluster.run(0.01)
        cluster.heal()
        sender.send("n2", "t", 2).addBoth(results.append)
        sender.send("n2", "t", 3).addBoth(results.append)
        cluster.run(0.05)
        self.assertEqual(results, [None, None])
        self.assertEqual(received["n2"], [])
        # The receiver's side removes the sender, which does not notice.
        cluster.isolate("n1")
        self.assertTrue(
            cluster.run_until(lambda: "n1" not in receiver.view.active_ids(), timeout=10.0)
        )
        self.assertIn("n2", sender.view.active_ids())
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=20.0))
        sender.send("n2", "t", 4).addBoth(results.append)
        cluster.run(10)
        self.assertEqual([m.body for m in received["n2"]], [1, 2, 3, 4])
        self.assertEqual(results, [None] * 4)
        checker.assert_ok()
        membership.assert_ok()


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


class CausalMembershipTests(SynchronousTestCase):
    """
    Causal broadcast across membership changes: every wait for a member
    that left ends, members that come back are tracked again, and nothing
    is ever delivered after what depends on it.
    """

    def dropped(self, cluster: Any, node_id: str, by: tuple[str, ...]) -> None:
        self.assertTrue(
            cluster.run_until(
                lambda: all(not cluster.nodes[n].view.is_active_member(node_id) for n in by), 10
            )
        )

    def bodies(self, received: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {node_id: [m.body for m in messages] for node_id, messages in received.items()}

    def test_member_dropped_unawares_is_resumed(self) -> None:
        """
        A member cut off alone keeps its own view (it never sees itself
        dropped) while the others drop it and forget its key. When the
        partition heals, its causal broadcasts are delivered again: the
        others resume its key and ask for its baseline.
        """
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        cluster.nodes["n5"].broadcast("t", "before", order="causal")
        cluster.run(0.5)
        cluster.isolate("n5")
        self.dropped(cluster, "n5", ("n1", "n2", "n3", "n4"))
        self.assertTrue(cluster.nodes["n5"].view.is_active_member("n5"))
        cluster.nodes["n1"].broadcast("t", "while-out", order="causal")
        cluster.run(1.0)
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, 30))
        cluster.run(2.0)
        cluster.nodes["n5"].broadcast("t", "after", order="causal")
        cluster.run(2.0)
        bodies = self.bodies(received)
        for node_id in ("n1", "n2", "n3", "n4"):
            self.assertEqual(bodies[node_id], ["before", "while-out", "after"])
        self.assertEqual(bodies["n5"], ["before", "after"])
        checker.assert_ok()

    def test_rejoined_member_reaches_restarted_node(self) -> None:
        """
        A member that was dropped and rejoined broadcasts under the same key
        as before (one key per process), so a node restarted later, which
        never knew its earlier broadcasts, does not wait for them.
        """
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        cluster.nodes["n4"].broadcast("t", "first", order="causal")
        cluster.run(0.5)
        cluster.pause("n4")
        self.dropped(cluster, "n4", ("n1", "n2", "n3", "n5"))
        cluster.resume("n4")
        self.assertTrue(cluster.run_until(cluster.converged, 30))
        cluster.nodes["n4"].broadcast("t", "rejoined", order="causal")
        cluster.run(1.0)
        cluster.crash("n2")
        self.dropped(cluster, "n2", ("n1", "n3", "n4", "n5"))
        restarted = cluster.restart("n2")
        received["n2"] = []
        restarted.on_message("t", received["n2"].append)
        self.assertTrue(cluster.run_until(cluster.converged, 30))
        cluster.run(1.0)
        cluster.nodes["n4"].broadcast("t", "after-restart", order="causal")
        cluster.run(2.0)
        bodies = self.bodies(received)
        self.assertEqual(bodies["n2"], ["after-restart"])
        for node_id in ("n1", "n3", "n4", "n5"):
            self.assertEqual(bodies[node_id], ["first", "rejoined", "after-restart"])
        checker.assert_ok()

    def test_resumed_member_never_delivers_its_past_late(self) -> None:
        """
        n1 misses n5's broadcast s1, which n2 delivers; n5 is then dropped
        and n2 broadcasts t1, which depends on s1, while n5 is out: n1
        delivers t1 without waiting for s1 (its sender left). When n5 comes
        back, s1 reaches n1 at last, and must not be delivered after t1:
        n2's stamp still counted s1 (a forgotten key keeps its high-water
        mark in the clock), so n1 resumes n5's key past it.
        """
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        cluster.cut_one_way("n5", "n1")
        cluster.nodes["n5"].broadcast("t", "s1", order="causal")
        cluster.run(0.3)
        cluster.isolate("n5")
        self.dropped(cluster, "n5", ("n1", "n2"))
        cluster.nodes["n2"].broadcast("t", "t1", order="causal")
        cluster.run(0.5)
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, 30))
        cluster.run(2.0)
        cluster.nodes["n5"].broadcast("t", "after", order="causal")
        cluster.run(2.0)
        bodies = self.bodies(received)
        self.assertEqual(bodies["n1"], ["t1", "after"])
        for node_id in ("n2", "n3", "n4"):
            self.assertEqual(bodies[node_id], ["s1", "t1", "after"])
        checker.assert_ok()

    def test_broadcast_of_dropped_member_held_until_it_is_back(self) -> None:
        """
        A member the others dropped, which does not know it, broadcasts; its
        broadcast reaches them while they do not list it. They hold it, and
        deliver it once it is back in their view.
        """
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        cluster.isolate("n5")
        self.dropped(cluster, "n5", ("n1", "n2", "n3", "n4"))
        cluster.heal()
        cluster.cut_one_way("n1", "n5")
        for node_id in ("n2", "n3", "n4"):
            cluster.cut_one_way(node_id, "n5")
            cluster.cut_one_way("n5", node_id)
        cluster.nodes["n5"].broadcast("t", "m", order="causal")
        cluster.run(0.3)
        self.assertEqual(self.bodies(received)["n1"], [])
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, 30))
        cluster.run(2.0)
        self.assertEqual(self.bodies(received), {n: ["m"] for n in cluster.node_ids})
        checker.assert_ok()

    def test_member_that_left_is_retired(self) -> None:
        """
        A member that leaves of its own accord never comes back as the same
        process: the others retire its key, which leaves their clocks (a
        crashed or cut-off member's key stays, as a high-water mark, since
        it may come back).
        """
        cluster, checker, _ = formed(size=5, seed=3)
        received = collect(cluster)
        n5 = cluster.nodes["n5"]
        key = n5.messenger._causal_key
        n5.broadcast("t", "bye", order="causal")
        cluster.run(0.5)
        for node_id in ("n1", "n2", "n3", "n4"):
            self.assertIn(key, cluster.nodes[node_id].messenger._causal_in.clock)
        left: list[Any] = []
        n5.leave().addBoth(left.append)
        self.dropped(cluster, "n5", ("n1", "n2", "n3", "n4"))
        cluster.run(0.5)
        self.assertEqual(left, [None])
        cluster.nodes["n1"].broadcast("t", "after", order="causal")
        cluster.run(1.0)
        for node_id in ("n1", "n2", "n3", "n4"):
            self.assertEqual(self.bodies(received)[node_id], ["bye", "after"])
            self.assertNotIn(key, cluster.nodes[node_id].messenger._causal_in.clock)
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


    def test_cut_off_coordinator_delivers_nothing(self) -> None:
        """
        A coordinator cut off with a minority keeps acting until it notices
        (up to C{suspect_after}); what it sequences then never commits, so
        neither it nor its side delivers anything the majority then orders
        differently, and every message ends up at one position everywhere.
        """
        cluster, checker, _ = formed(size=5, seed=4)
        received = collect(cluster)
        coordinator = cluster.coordinator_seen_by("n1")
        assert coordinator is not None
        minority = [coordinator, next(n for n in cluster.node_ids if n != coordinator)]
        majority = [n for n in cluster.node_ids if n not in minority]
        cluster.partition(minority, majority)
        done: list[Any] = []
        for i in range(5):
            for node_id in minority:
                cluster.nodes[node_id].broadcast("t", f"{node_id}-{i}", order="total").addBoth(
                    done.append
                )
            cluster.run(0.05)
        for node_id in minority:
            self.assertEqual(received[node_id], [], node_id)
        self.assertEqual(done, [])
        cluster.run(4)
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=10))
        # Retransmissions back off to messaging.retry_max (5 s) while cut.
        cluster.run(8)
        self.assertEqual(done, [None] * 10)
        sequences = {n: [m.body for m in received[n]] for n in majority}
        for node_id in majority:
            self.assertEqual(sorted(sequences[node_id]), sorted(sequences[majority[0]]))
            self.assertEqual(len(sequences[node_id]), 10)
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
