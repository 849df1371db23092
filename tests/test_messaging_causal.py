"""
Tests for L{clustron.messaging.causal}.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import ProtocolViolation
from clustron.messaging.arrival import (
    BUFFER_FULL,
    BUFFERED,
    DELIVERED,
    DUPLICATE,
    FORGOTTEN,
    TOO_MANY_STREAMS,
    Arrival,
)
from clustron.messaging.causal import (
    CausalBroadcaster,
    Causality,
    CausalReceiver,
    VectorClock,
)

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def vc(**entries: int) -> VectorClock:
    return VectorClock(entries)


class VectorClockTests(SynchronousTestCase):
    """
    L{VectorClock}.
    """

    def test_mapping(self) -> None:
        """
        A clock is a read-only mapping of its non-zero entries; L{at} reads
        any member, zero when absent.
        """
        clock = VectorClock({"a": 2, "b": 0, "c": 1})
        self.assertEqual(dict(clock), {"a": 2, "c": 1})
        self.assertEqual(len(clock), 2)
        self.assertEqual(clock["a"], 2)
        self.assertRaises(KeyError, lambda: clock["b"])
        self.assertEqual((clock.at("b"), clock.at("zz")), (0, 0))
        self.assertNotIn("b", clock)
        self.assertEqual(repr(clock), "VectorClock(a=2, c=1)")

    def test_pairs(self) -> None:
        """
        A clock can be built from pairs.
        """
        self.assertEqual(VectorClock([("a", 1), ("b", 2)]), vc(a=1, b=2))

    def test_equality_and_hash(self) -> None:
        """
        Clocks that agree on every member are equal and hash equal, zeros
        or not.
        """
        self.assertEqual(vc(a=1, b=0), vc(a=1))
        self.assertEqual(hash(vc(a=1, b=0)), hash(vc(a=1)))
        self.assertNotEqual(vc(a=1), vc(a=2))
        self.assertEqual(len({vc(a=1), vc(a=1, z=0)}), 1)

    def test_validation(self) -> None:
        """
        Keys must be non-empty str and counts ints >= 0.
        """
        for bad in [{"": 1}, {"a": -1}, {"a": 1.0}, {"a": True}, {1: 1}]:
            self.assertRaises(ValueError, VectorClock, bad)

    def test_increment_replace_without(self) -> None:
        """
        Updates return new clocks and leave the original alone.
        """
        clock = vc(a=1)
        self.assertEqual(clock.increment("a"), vc(a=2))
        self.assertEqual(clock.increment("b"), vc(a=1, b=1))
        self.assertEqual(clock.replace("c", 5), vc(a=1, c=5))
        self.assertEqual(vc(a=1, b=2).without("a"), vc(b=2))
        self.assertEqual(clock, vc(a=1))

    def test_merge(self) -> None:
        """
        Merging takes the entry-wise maximum.
        """
        self.assertEqual(vc(a=3, b=1).merge(vc(b=4, c=2)), vc(a=3, b=4, c=2))

    def test_compare(self) -> None:
        """
        L{VectorClock.compare} tells before, after, concurrent and equal.
        """
        self.assertIs(vc(a=1).compare(vc(a=1, b=1)), Causality.BEFORE)
        self.assertIs(vc(a=1, b=1).compare(vc(a=1)), Causality.AFTER)
        self.assertIs(vc(a=1).compare(vc(b=1)), Causality.CONCURRENT)
        self.assertIs(vc(a=2, b=1).compare(vc(a=1, b=2)), Causality.CONCURRENT)
        self.assertIs(vc(a=1).compare(vc(a=1, b=0)), Causality.EQUAL)
        self.assertIs(vc().compare(vc()), Causality.EQUAL)
        self.assertTrue(vc().happened_before(vc(a=1)))
        self.assertFalse(vc(a=1).happened_before(vc(a=1)))

    def test_wire(self) -> None:
        """
        L{VectorClock.to_wire} writes a dict L{VectorClock.from_wire} reads;
        anything else is a protocol violation.
        """
        clock = vc(a=1, b=7)
        self.assertEqual(clock.to_wire(), {"a": 1, "b": 7})
        self.assertEqual(VectorClock.from_wire(clock.to_wire()), clock)
        for bad in [None, [("a", 1)], {"a": "1"}, {"a": -1}, {"": 1}]:
            with self.assertRaises(ProtocolViolation, msg=repr(bad)) as caught:
                VectorClock.from_wire(bad)
            self.assertEqual(caught.exception.reason, "bad_vector_clock")
        with self.assertRaises(ProtocolViolation) as caught:
            VectorClock.from_wire({f"n{i}": 1 for i in range(5)}, max_entries=4)
        self.assertIn("limit is 4", str(caught.exception))

    @PROPERTY
    @given(
        st.dictionaries(st.sampled_from("abcd"), st.integers(0, 4)),
        st.dictionaries(st.sampled_from("abcd"), st.integers(0, 4)),
    )
    def test_compare_is_consistent(self, left: dict[str, int], right: dict[str, int]) -> None:
        """
        Comparing the other way round gives the mirror answer, and a merge
        is after (or equal to) both sides.
        """
        x, y = VectorClock(left), VectorClock(right)
        mirror = {
            Causality.BEFORE: Causality.AFTER,
            Causality.AFTER: Causality.BEFORE,
            Causality.CONCURRENT: Causality.CONCURRENT,
            Causality.EQUAL: Causality.EQUAL,
        }
        self.assertIs(y.compare(x), mirror[x.compare(y)])
        self.assertIs(x.compare(y) is Causality.EQUAL, x == y)
        merged = x.merge(y)
        self.assertIn(merged.compare(x), (Causality.AFTER, Causality.EQUAL))
        self.assertIn(merged.compare(y), (Causality.AFTER, Causality.EQUAL))


class CausalReceiverTests(SynchronousTestCase):
    """
    L{CausalReceiver} and L{CausalBroadcaster}.
    """

    def test_delivers_in_order(self) -> None:
        """
        A sender's broadcasts are delivered in their order.
        """
        receiver = CausalReceiver()
        self.assertEqual(receiver.receive("a", vc(a=2), "a2"), Arrival(True, BUFFERED))
        self.assertEqual(
            receiver.receive("a", vc(a=1), "a1"), Arrival(True, DELIVERED, ("a1", "a2"))
        )
        self.assertEqual(receiver.clock, vc(a=2))

    def test_waits_for_dependencies(self) -> None:
        """
        A broadcast that depends on another member's broadcast waits for
        it.
        """
        receiver = CausalReceiver()
        self.assertEqual(receiver.receive("b", vc(a=1, b=1), "b1"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.buffered, 1)
        self.assertEqual(receiver.receive("a", vc(a=1), "a1").deliver, ("a1", "b1"))
        self.assertEqual(receiver.buffered, 0)
        self.assertEqual(receiver.clock, vc(a=1, b=1))

    def test_concurrent_any_order(self) -> None:
        """
        Concurrent broadcasts are delivered as they come.
        """
        receiver = CausalReceiver()
        self.assertEqual(receiver.receive("b", vc(b=1), "b1").deliver, ("b1",))
        self.assertEqual(receiver.receive("a", vc(a=1), "a1").deliver, ("a1",))

    def test_duplicates(self) -> None:
        """
        Delivered or buffered broadcasts offered again are duplicates.
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=1), "a1")
        receiver.receive("a", vc(a=3), "a3")
        self.assertEqual(receiver.receive("a", vc(a=1), "a1"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.receive("a", vc(a=3), "a3"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.buffered, 1)

    def test_buffer_full(self) -> None:
        """
        When the buffer is full a broadcast that would wait is refused (not
        taken); one that is deliverable is still delivered.
        """
        receiver = CausalReceiver(max_buffer=1)
        receiver.receive("a", vc(a=2), "a2")
        self.assertEqual(receiver.receive("b", vc(a=1, b=1), "b1"), Arrival(False, BUFFER_FULL))
        self.assertEqual(receiver.receive("a", vc(a=1), "a1").deliver, ("a1", "a2"))
        self.assertEqual(receiver.receive("b", vc(a=1, b=1), "b1").deliver, ("b1",))

    def test_too_many_members(self) -> None:
        """
        Beyond C{max_members} senders a new one is refused until one is
        forgotten.
        """
        receiver = CausalReceiver(max_members=1)
        receiver.receive("a", vc(a=1), "a1")
        self.assertEqual(receiver.receive("b", vc(b=1), "b1"), Arrival(False, TOO_MANY_STREAMS))
        receiver.forget("a")
        self.assertEqual(receiver.receive("b", vc(b=1), "b1").deliver, ("b1",))

    def test_bad_stamp(self) -> None:
        """
        A stamp that does not count its own sender is a protocol violation;
        a stamp that is not a clock is a TypeError.
        """
        receiver = CausalReceiver()
        with self.assertRaises(ProtocolViolation) as caught:
            receiver.receive("a", vc(b=1), "x")
        self.assertEqual(caught.exception.reason, "bad_causal_stamp")
        self.assertRaises(TypeError, receiver.receive, "a", {"a": 1}, "x")

    def test_forget_drops_sender(self) -> None:
        """
        Forgetting a member drops its buffered broadcasts and its entry;
        its later broadcasts are dropped as forgotten (taken: no point in
        retransmitting them).
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=1), "a1")
        receiver.receive("a", vc(a=3), "a3")
        self.assertEqual(receiver.forget("a"), ())
        self.assertEqual(receiver.buffered, 0)
        self.assertEqual(receiver.dropped, 1)
        # The clock keeps what was delivered of it, as its high-water mark.
        self.assertEqual(receiver.clock, vc(a=1))
        self.assertTrue(receiver.is_forgotten("a"))
        self.assertEqual(receiver.forgotten_keys(), ("a",))
        self.assertEqual(receiver.receive("a", vc(a=2), "a2"), Arrival(True, FORGOTTEN))

    def test_forget_releases_dependents(self) -> None:
        """
        Broadcasts of other members that wait only for a forgotten member's
        broadcasts are released by L{CausalReceiver.forget}, and later ones
        that name it are not held back.
        """
        receiver = CausalReceiver()
        receiver.receive("b", vc(a=2, b=1), "b1")
        receiver.receive("c", vc(c=1, b=1), "c1")
        self.assertEqual(receiver.buffered, 2)
        self.assertEqual(receiver.forget("a"), ("b1", "c1"))
        self.assertEqual(receiver.buffered, 0)
        self.assertEqual(receiver.receive("b", vc(a=9, b=2), "b2").deliver, ("b2",))

    def test_forgotten_mark_stays_in_clock(self) -> None:
        """
        A forgotten member's entries in the stamps of delivered broadcasts
        are ignored, but raise its high-water mark, which stays in the
        clock: the stamps of this member's broadcasts keep counting the
        forgotten member's broadcasts in their causal past.
        """
        receiver = CausalReceiver()
        broadcaster = CausalBroadcaster("c", receiver)
        receiver.receive("a", vc(a=1), "a1")
        receiver.forget("a")
        self.assertEqual(receiver.receive("b", vc(a=3, b=1), "b1").deliver, ("b1",))
        self.assertEqual(receiver.clock, vc(a=3, b=1))
        self.assertEqual(broadcaster.stamp(), vc(a=3, b=1, c=1))

    def test_clock_bounded(self) -> None:
        """
        The clock has at most C{max_members} entries: the marks of the keys
        forgotten longest ago are left out first.
        """
        receiver = CausalReceiver(max_members=3)
        for node in ("a", "b", "c"):
            receiver.receive(node, vc(**{node: 1}), node)
            receiver.forget(node)
        receiver.receive("d", vc(d=1), "d1")
        self.assertEqual(receiver.clock, vc(b=1, c=1, d=1))

    def test_resume_from_mark(self) -> None:
        """
        A resumed member is tracked again from its high-water mark: its
        broadcasts at or below the mark are never delivered (they may be in
        the past of what was delivered while it was forgotten), those above
        it are, in order, once L{CausalReceiver.skip} closed the gaps its
        member never sent here; and broadcasts that depend on it wait again.
        """
        receiver = CausalReceiver()
        receiver.forget("a")
        receiver.receive("b", vc(a=2, b=1), "b1")
        self.assertTrue(receiver.resume("a"))
        self.assertFalse(receiver.is_forgotten("a"))
        self.assertFalse(receiver.resume("a"))
        self.assertEqual(receiver.clock, vc(a=2, b=1))
        self.assertEqual(receiver.receive("a", vc(a=2), "a2"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.receive("a", vc(a=5), "a5"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.receive("b", vc(a=5, b=2), "b2"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.skip("a", 4), ("a5", "b2"))
        self.assertEqual(receiver.receive("a", vc(a=6), "a6").deliver, ("a6",))
        self.assertEqual(receiver.clock, vc(a=6, b=2))

    def test_resume_after_nothing_known(self) -> None:
        """
        A member forgotten before anything of it was delivered or named is
        resumed from zero.
        """
        receiver = CausalReceiver()
        receiver.forget("a")
        self.assertEqual(receiver.clock, vc())
        self.assertTrue(receiver.resume("a"))
        self.assertEqual(receiver.receive("a", vc(a=1), "a1").deliver, ("a1",))

    def test_retire(self) -> None:
        """
        A retired member (its process is gone) is forgotten, left out of
        the clock, and never resumed.
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=2), "a2")
        receiver.receive("b", vc(a=2, b=1), "b1")
        self.assertEqual(receiver.retire("a"), ("b1",))
        self.assertTrue(receiver.is_retired("a"))
        self.assertTrue(receiver.is_forgotten("a"))
        self.assertEqual(receiver.dropped, 1)
        self.assertEqual(receiver.clock, vc(b=1))
        self.assertFalse(receiver.resume("a"))
        self.assertEqual(receiver.receive("a", vc(a=1), "a1"), Arrival(True, FORGOTTEN))

    def test_known_keys(self) -> None:
        """
        The known members are those counted, with a floor or with buffered
        broadcasts, and those named by a buffered broadcast's stamp; not the
        forgotten ones.
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=1), "a1")
        receiver.receive("b", vc(b=1, c=1, d=2), "b1")
        receiver.skip("e", 3)
        self.assertEqual(receiver.known_keys(), {"a", "b", "c", "d", "e"})
        receiver.forget("c")
        self.assertEqual(receiver.known_keys(), {"a", "b", "d", "e"})

    def test_skip(self) -> None:
        """
        L{CausalReceiver.skip} stops waiting for a member's broadcasts up to
        a number that were not received by now; buffered ones below it are
        still delivered in order, and the skip is remembered for what is
        not received yet.
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=2), "a2")
        receiver.receive("b", vc(a=4, b=1), "b1")
        self.assertEqual(receiver.skip("a", 4), ("a2", "b1"))
        self.assertEqual(receiver.clock, vc(a=4, b=1))
        self.assertEqual(receiver.receive("a", vc(a=3), "a3"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.skip("a", 2), ())
        self.assertEqual(receiver.skip("z", 0), ())
        receiver.forget("a")
        self.assertEqual(receiver.skip("a", 9), ())

    def test_forgotten_bounded(self) -> None:
        """
        Only the last C{max_forgotten} forgotten members are remembered.
        """
        receiver = CausalReceiver(max_forgotten=2)
        for node in ["a", "b", "c"]:
            receiver.forget(node)
        self.assertFalse(receiver.is_forgotten("a"))
        self.assertTrue(receiver.is_forgotten("b"))
        self.assertTrue(receiver.is_forgotten("c"))

    def test_validation(self) -> None:
        """
        Bounds must be in range.
        """
        self.assertRaises(ValueError, CausalReceiver, max_buffer=-1)
        self.assertRaises(ValueError, CausalReceiver, max_members=0)
        self.assertRaises(ValueError, CausalReceiver, max_forgotten=0)

    def test_broadcaster(self) -> None:
        """
        A broadcaster stamps with its receiver's delivered clock and its own
        count of broadcasts; its own broadcasts go through its receiver.
        """
        receiver = CausalReceiver()
        broadcaster = CausalBroadcaster("a", receiver)
        first = broadcaster.stamp()
        self.assertEqual(first, vc(a=1))
        receiver.receive("b", vc(b=1), "b1")
        second = broadcaster.stamp()
        self.assertEqual(second, vc(a=2, b=1))
        self.assertEqual(broadcaster.sent, 2)
        self.assertEqual(receiver.receive("a", second, "a2"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.receive("a", first, "a1").deliver, ("a1", "a2"))

    def test_broadcaster_resumes(self) -> None:
        """
        A broadcaster made for a receiver that already delivered some of
        its member's broadcasts continues the count.
        """
        receiver = CausalReceiver()
        receiver.receive("a", vc(a=1), "a1")
        self.assertEqual(CausalBroadcaster("a", receiver).stamp(), vc(a=2))


class CausalPropertyTests(SynchronousTestCase):
    """
    Causal delivery over random histories.
    """

    @PROPERTY
    @given(
        processes=st.integers(min_value=2, max_value=4),
        seed=st.integers(min_value=0, max_value=2**32),
        steps=st.integers(min_value=0, max_value=120),
        max_buffer=st.integers(min_value=0, max_value=20),
        duplication=st.floats(min_value=0, max_value=0.5),
    )
    def test_never_violates_happens_before(
        self, processes: int, seed: int, steps: int, max_buffer: int, duplication: float
    ) -> None:
        """
        Simulated processes broadcast and receive in a random order, with
        duplicates, every process receiving its own broadcasts like the
        others'; refused broadcasts are retransmitted later. Every process
        delivers every broadcast exactly once, and never before a broadcast
        that happened before it. The stamps' order agrees with the real
        causal order.
        """
        rng = random.Random(seed)
        names = [f"p{i}" for i in range(processes)]
        receivers = {name: CausalReceiver(max_buffer=max_buffer) for name in names}
        broadcasters = {name: CausalBroadcaster(name, receivers[name]) for name in names}
        inboxes: dict[str, list[tuple[str, VectorClock, Any]]] = {name: [] for name in names}
        history: dict[str, list[Any]] = {name: [] for name in names}  # sent or delivered
        delivered: dict[str, list[Any]] = {name: [] for name in names}
        depends: dict[Any, set[Any]] = {}
        stamps: dict[Any, VectorClock] = {}

        def take(name: str) -> None:
            inbox = inboxes[name]
            sender, stamp, msg = inbox.pop(rng.randrange(len(inbox)))
            arrival = receivers[name].receive(sender, stamp, msg)
            if not arrival.taken:
                inbox.append((sender, stamp, msg))
            for delivered_msg in arrival.deliver:
                delivered[name].append(delivered_msg)
                history[name].append(delivered_msg)

        for _ in range(steps):
            name = rng.choice(names)
            if rng.random() < 0.4 or not inboxes[name]:
                stamp = broadcasters[name].stamp()
                msg = (name, stamp.at(name))
                stamps[msg] = stamp
                depends[msg] = set(history[name]).union(*(depends[m] for m in history[name]))
                history[name].append(msg)
                for other in names:
                    for _ in range(2 if rng.random() < duplication else 1):
                        inboxes[other].append((name, stamp, msg))
            else:
                take(name)
        for _ in range(100000):
            waiting = [name for name in names if inboxes[name]]
            if not waiting:
                break
            take(rng.choice(waiting))
        for name in names:
            order = delivered[name]
            self.assertEqual(sorted(order), sorted(stamps))
            position = {msg: index for index, msg in enumerate(order)}
            for msg in order:
                for earlier in depends[msg]:
                    self.assertLess(position[earlier], position[msg])
            self.assertEqual(receivers[name].buffered, 0)
        for one in stamps:
            for other in stamps:
                self.assertEqual(
                    stamps[one].happened_before(stamps[other]), one in depends[other]
                )

    @PROPERTY
    @given(
        processes=st.integers(min_value=2, max_value=4),
        seed=st.integers(min_value=0, max_value=2**32),
        steps=st.integers(min_value=0, max_value=150),
    )
    def test_forget_and_resume_never_violate_happens_before(
        self, processes: int, seed: int, steps: int
    ) -> None:
        """
        Processes broadcast and receive in a random order while each of
        them forgets and resumes the others at random (as membership changes
        would make it). Whatever is lost, no process ever delivers a
        broadcast after one that it happened before, nor twice.
        """
        rng = random.Random(seed)
        names = [f"p{i}" for i in range(processes)]
        receivers = {name: CausalReceiver() for name in names}
        broadcasters = {name: CausalBroadcaster(name, receivers[name]) for name in names}
        inboxes: dict[str, list[tuple[str, VectorClock, Any]]] = {name: [] for name in names}
        history: dict[str, list[Any]] = {name: [] for name in names}
        delivered: dict[str, list[Any]] = {name: [] for name in names}
        depends: dict[Any, set[Any]] = {}

        for _ in range(steps):
            name = rng.choice(names)
            receiver = receivers[name]
            roll = rng.random()
            if roll < 0.1:
                other = rng.choice([n for n in names if n != name])
                if receiver.is_forgotten(other):
                    receiver.resume(other)
                else:
                    for msg in receiver.forget(other):
                        delivered[name].append(msg)
                        history[name].append(msg)
            elif roll < 0.45 or not inboxes[name]:
                stamp = broadcasters[name].stamp()
                msg = (name, stamp.at(name))
                depends[msg] = set(history[name]).union(*(depends[m] for m in history[name]))
                history[name].append(msg)
                for other in names:
                    inboxes[other].append((name, stamp, msg))
            else:
                inbox = inboxes[name]
                sender, stamp, msg = inbox.pop(rng.randrange(len(inbox)))
                for delivered_msg in receiver.receive(sender, stamp, msg).deliver:
                    delivered[name].append(delivered_msg)
                    history[name].append(delivered_msg)
        for name in names:
            order = delivered[name]
            self.assertEqual(len(order), len(set(order)))
            position = {msg: index for index, msg in enumerate(order)}
            for msg in order:
                for earlier in depends[msg]:
                    if earlier in position:
                        self.assertLess(position[earlier], position[msg])
