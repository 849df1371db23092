"""
Total order on its own (L{clustron.messaging.total}), sans-IO: a few
L{TotalOrder} instances wired by an in-memory router that delivers in FIFO
order per pair and can drop a pair's traffic, on one L{Clock}.

These pin the commit rule (a position is delivered only once a quorum holds
it) and the flush rule (a new epoch keeps what the members of the latest
opening hold, and drops what an older epoch's cut-off coordinator sequenced
alone).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from clustron.messaging.total import ALREADY, Entry, TotalOrder


class Router:
    """
    Delivers what L{TotalOrder} instances send each other, in order, unless
    that direction is cut (C{cut} holds C{(sender, receiver)} pairs).
    """

    def __init__(self, names: list[str], max_pending: int = 4096) -> None:
        self.max_pending = max_pending
        self.clock = Clock()
        self.queue: deque[tuple[str, str, dict[str, Any]]] = deque()
        self.cut: set[tuple[str, str]] = set()
        self.delivered: dict[str, list[Entry]] = {name: [] for name in names}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.nodes = {name: self._make(name) for name in names}

    def _make(self, name: str) -> TotalOrder:
        def send(to: str, body: dict[str, Any]) -> None:
            self.sent.append((name, to, body))
            if (name, to) not in self.cut:
                self.queue.append((name, to, dict(body)))

        return TotalOrder(
            name, self.clock, send, self.delivered[name].append, max_pending=self.max_pending
        )

    def run(self) -> None:
        """
        Deliver everything in flight, and fire the timers of this instant,
        until nothing moves.
        """
        for _ in range(1000):
            self.clock.advance(0)
            if not self.queue:
                return
            while self.queue:
                sender, to, body = self.queue.popleft()
                if (sender, to) not in self.cut:
                    self.nodes[to].received(sender, body.pop("k"), body)
        raise AssertionError("the routed nodes never went quiet")

    def view(
        self, coordinator: str, epoch: int, members: list[str], quorum: int | None = None
    ) -> None:
        """
        Install a view on C{members} (the coordinator acting).
        """
        for name in members:
            self.nodes[name].view_changed(coordinator, epoch, members, name == coordinator, quorum)
        self.run()

    def isolate(self, *pairs: str) -> None:
        """
        Cut both directions of each pair (C{"ab"}: between a and b).
        """
        for a, b in pairs:
            self.cut |= {(a, b), (b, a)}

    def bodies(self, name: str) -> list[Any]:
        return [entry.body for entry in self.delivered[name]]


class CommitTests(SynchronousTestCase):
    """
    A position is delivered only once a quorum of the view holds it.
    """

    def test_deliver_after_quorum_holds(self) -> None:
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        router.nodes["b"].broadcast("b:1:1", "t", "one")
        router.run()
        for name in "abc":
            self.assertEqual(router.bodies(name), ["one"])
            self.assertEqual(router.delivered[name][0].position, (1, 1))

    def test_cut_off_coordinator_delivers_nothing(self) -> None:
        """
        A coordinator that can reach no quorum sequences (it does not know
        yet) but delivers nothing, and the broadcast does not complete.
        """
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        router.isolate("ab", "ac")
        done: list[Any] = []
        router.nodes["a"].broadcast("a:1:1", "t", "alone").addBoth(done.append)
        router.run()
        self.assertEqual(router.bodies("a"), [])
        self.assertEqual(done, [])
        # One more holder makes a quorum of three.
        router.cut -= {("a", "b"), ("b", "a")}
        router.nodes["a"].view_changed("a", 1, ["a", "b", "c"], True, None)
        sequenced = [body for _, to, body in router.sent if to == "b" and body["k"] == "ts"]
        self.assertEqual(len(sequenced), 1)
        router.nodes["b"].received("a", "ts", {"e": sequenced[0]["e"]})
        router.run()
        self.assertEqual(router.bodies("a"), ["alone"])
        self.assertEqual(router.bodies("b"), ["alone"])
        self.assertEqual(done, [None])

    def test_uncommitted_positions_bounded(self) -> None:
        """
        At most C{max_pending} positions wait for their commit; what comes
        after waits, unsequenced, until commits make room.
        """
        router = Router(["a", "b", "c"], max_pending=2)
        router.view("a", 1, ["a", "b", "c"])
        # What "a" sends is lost; what it receives arrives.
        router.cut |= {("a", "b"), ("a", "c")}
        for name in "bc":
            for i in range(2):
                router.nodes[name].broadcast(f"{name}:1:{i}", "t", f"{name}{i}")
        router.run()
        to_b = [body for _, to, body in router.sent if to == "b"]
        self.assertEqual([body["e"][:2] for body in to_b if body["k"] == "ts"], [[1, 1], [1, 2]])
        router.cut.clear()
        router.nodes["a"].view_changed("a", 1, ["a", "b", "c"], True, None, renewed=["b", "c"])
        router.run()
        for name in "abc":
            self.assertEqual(router.bodies(name), ["b0", "b1", "c0", "c1"])

    def test_quorum_of_one_commits_at_once(self) -> None:
        """
        C{quorum: none} (a quorum of one) commits without waiting.
        """
        router = Router(["a", "b"])
        router.view("a", 1, ["a", "b"], quorum=1)
        router.isolate("ab")
        router.nodes["a"].broadcast("a:1:1", "t", "now")
        router.run()
        self.assertEqual(router.bodies("a"), ["now"])


class FlushTests(SynchronousTestCase):
    """
    The flush keeps every position a quorum may hold and drops positions of
    an older epoch that only a cut-off coordinator held.
    """

    def test_cut_off_positions_dropped_and_sequenced_once(self) -> None:
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        # "a" is cut off but for c's forward: it sequences c's broadcast at
        # (1, 1), which nobody else ever holds.
        router.isolate("ab")
        router.cut.add(("a", "c"))
        router.nodes["c"].broadcast("c:1:1", "t", "m")
        router.run()
        router.isolate("ab", "ac")
        self.assertEqual(router.bodies("a"), [])
        # The majority moves on: b coordinates epoch 2 with c ("a" does not
        # know yet).
        router.view("b", 2, ["b", "c"])
        for name in "bc":
            self.assertEqual(router.bodies(name), ["m"])
            self.assertEqual(router.delivered[name][0].position, (2, 1))
        # The sides merge in epoch 3: what "a" holds of epoch 1 is not the
        # history's, and it delivers m at the majority's position.
        router.cut.clear()
        router.view("b", 3, ["a", "b", "c"])
        openings = [body for _, _, body in router.sent if body["k"] == "to" and body["epoch"] == 3]
        self.assertTrue(openings)
        for opening in openings:
            self.assertEqual([e[:2] for e in opening["fill"]], [[2, 1]])
        router.nodes["b"].broadcast("b:1:1", "t", "after")
        router.run()
        self.assertEqual(router.bodies("b"), ["m", "after"])
        self.assertEqual(router.bodies("c"), ["m", "after"])
        self.assertEqual(router.bodies("a"), ["m", "after"])
        self.assertEqual(router.delivered["a"][0].position, (2, 1))

    def test_held_positions_survive_coordinator_loss(self) -> None:
        """
        A position a quorum holds but that was never committed (the
        coordinator died first) is kept by the next epoch at the same
        position, and delivered once.
        """
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        # The commit notices from "a" are lost: b and c hold (1, 1) only.
        router.nodes["a"]._send_commit = lambda: None  # type: ignore[method-assign]
        router.nodes["b"].broadcast("b:1:1", "t", "held")
        router.run()
        self.assertEqual(router.bodies("a"), ["held"])
        self.assertEqual(router.bodies("b"), [])
        router.isolate("ab", "ac")
        router.view("b", 2, ["b", "c"])
        for name in "bc":
            self.assertEqual(router.bodies(name), ["held"])
            self.assertEqual(router.delivered[name][0].position, (1, 1))

    def test_rejoined_origin_told_when_history_commits(self) -> None:
        """
        An origin that joins after its message took a position in the
        history (so it never delivers it itself) is told once it commits.
        """
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        done: list[Any] = []
        router.nodes["a"]._send_commit = lambda: None  # type: ignore[method-assign]
        router.nodes["c"].broadcast("c:1:1", "t", "x").addBoth(done.append)
        router.run()
        self.assertEqual(done, [])
        # c leaves and comes back fresh while b opens epoch 2: c skips the
        # history, and b tells it its message is delivered.
        router.nodes["c"].left_view()
        router.isolate("ab", "ac")
        router.view("b", 2, ["b", "c"])
        self.assertEqual(router.bodies("b"), ["x"])
        self.assertEqual(router.bodies("c"), [])
        self.assertEqual(done, [None])
        self.assertTrue(any(body["k"] == ALREADY for _, to, body in router.sent if to == "c"))


class JoinTests(SynchronousTestCase):
    """
    A member that joins an open epoch starts after its commit point.
    """

    def test_restarted_member_follows(self) -> None:
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        router.nodes["b"].broadcast("b:1:1", "t", "before")
        router.run()
        # c restarts: a new TotalOrder under the same name.
        router.delivered["c"] = []
        router.nodes["c"] = router._make("c")
        router.nodes["a"].view_changed("a", 1, ["a", "b", "c"], True, None, renewed=["c"])
        router.nodes["b"].view_changed("a", 1, ["a", "b", "c"], False, None)
        router.run()
        router.nodes["c"].view_changed("a", 1, ["a", "b", "c"], False, None)
        router.run()
        router.nodes["b"].broadcast("b:1:2", "t", "after")
        router.run()
        self.assertEqual(router.bodies("c"), ["after"])
        self.assertEqual(router.delivered["c"][0].position, (1, 2))
        self.assertEqual(router.bodies("a"), ["before", "after"])

    def test_refuted_member_keeps_its_place(self) -> None:
        """
        An opening sent to a member that never stopped following (its
        incarnation grew) neither skips nor repeats anything.
        """
        router = Router(["a", "b", "c"])
        router.view("a", 1, ["a", "b", "c"])
        router.nodes["b"].broadcast("b:1:1", "t", "one")
        router.run()
        router.nodes["a"].view_changed("a", 1, ["a", "b", "c"], True, None, renewed=["c"])
        router.run()
        router.nodes["b"].broadcast("b:1:2", "t", "two")
        router.run()
        self.assertEqual(router.bodies("c"), ["one", "two"])
