"""
Tests for L{clustron.messaging.fifo}.
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
    STALE,
    TOO_MANY_STREAMS,
    Arrival,
)
from clustron.messaging.fifo import FifoReceiver, FifoSender, FifoStamp

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


class FifoSenderTests(SynchronousTestCase):
    """
    L{FifoSender}.
    """

    def test_numbers_per_stream(self) -> None:
        """
        Each stream counts from 1 in its own generation.
        """
        sender = FifoSender(incarnation=9)
        a1, a2, b1 = sender.stamp("a"), sender.stamp("a"), sender.stamp("b")
        self.assertEqual((a1.incarnation, a1.seq, a2.seq, b1.seq), (9, 1, 2, 1))
        self.assertEqual(a1.stream_id, a2.stream_id)
        self.assertNotEqual(a1.stream_id, b1.stream_id)
        self.assertEqual(len(sender), 2)

    def test_forget_starts_new_generation(self) -> None:
        """
        A forgotten stream used again is a newer generation from 1.
        """
        sender = FifoSender(incarnation=9)
        old = sender.stamp("a")
        sender.stamp("a")
        sender.forget("a")
        new = sender.stamp("a")
        self.assertEqual(new.seq, 1)
        self.assertGreater(new.stream_id, old.stream_id)
        sender.forget("nobody")

    def test_bounded(self) -> None:
        """
        Beyond C{max_streams} the least recently used stream is forgotten.
        """
        sender = FifoSender(incarnation=1, max_streams=2)
        sender.stamp("a")
        sender.stamp("b")
        sender.stamp("a")
        sender.stamp("c")
        self.assertEqual(len(sender), 2)
        self.assertEqual(sender.stamp("a").seq, 3)
        self.assertEqual(sender.stamp("b").seq, 1)

    def test_first_follows_settlement(self) -> None:
        """
        C{first} is the lowest unsettled number: it moves up as the oldest
        messages settle, in whatever order they settle.
        """
        sender = FifoSender(incarnation=1)
        stamps = [sender.stamp("a") for _ in range(4)]
        self.assertEqual([stamp.first for stamp in stamps], [1, 1, 1, 1])
        sender.settle("a", stamps[1])
        self.assertEqual(sender.first("a"), 1)
        sender.settle("a", stamps[0])
        self.assertEqual(sender.first("a"), 3)
        self.assertEqual(sender.stamp("a").first, 3)
        sender.settle("a", stamps[0])  # twice: ignored
        self.assertEqual(sender.first("a"), 3)
        self.assertEqual(sender.first("unknown"), 1)

    def test_settle_ignores_other_generations(self) -> None:
        """
        Settling a stamp of a forgotten generation or another incarnation
        changes nothing.
        """
        sender = FifoSender(incarnation=1)
        old = sender.stamp("a")
        sender.forget("a")
        sender.stamp("a")
        sender.settle("a", old)
        sender.settle("a", FifoStamp(2, old.stream_id + 1, 1))
        sender.settle("gone", old)
        self.assertEqual(sender.first("a"), 1)

    def test_unsettled_bound(self) -> None:
        """
        When more than C{max_unsettled} messages settled above one that
        never does, that one is treated as settled.
        """
        sender = FifoSender(incarnation=1, max_unsettled=2)
        stamps = [sender.stamp("a") for _ in range(4)]
        sender.settle("a", stamps[1])
        sender.settle("a", stamps[2])
        self.assertEqual(sender.first("a"), 1)
        sender.settle("a", stamps[3])
        self.assertEqual(sender.first("a"), 5)

    def test_validation(self) -> None:
        """
        Bounds must be at least 1.
        """
        self.assertRaises(ValueError, FifoSender, 1, max_streams=0)
        self.assertRaises(ValueError, FifoSender, 1, max_unsettled=0)


class FifoReceiverTests(SynchronousTestCase):
    """
    L{FifoReceiver}.
    """

    def test_in_order(self) -> None:
        """
        In-order messages are delivered at once.
        """
        receiver = FifoReceiver()
        self.assertEqual(receiver.receive("a", 1, 1, "m1"), Arrival(True, DELIVERED, ("m1",)))
        self.assertEqual(receiver.receive("a", 1, 2, "m2"), Arrival(True, DELIVERED, ("m2",)))
        self.assertEqual(receiver.expected("a"), 3)
        self.assertIsNone(receiver.expected("b"))

    def test_out_of_order(self) -> None:
        """
        An early message waits for its predecessors, then is delivered
        with them, in order.
        """
        receiver = FifoReceiver()
        self.assertEqual(receiver.receive("a", 1, 3, "m3"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.receive("a", 1, 2, "m2"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.buffered, 2)
        self.assertEqual(
            receiver.receive("a", 1, 1, "m1"), Arrival(True, DELIVERED, ("m1", "m2", "m3"))
        )
        self.assertEqual(receiver.buffered, 0)

    def test_duplicates(self) -> None:
        """
        Delivered or buffered messages offered again are duplicates (taken:
        they need no retransmission) and are not delivered twice.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 1, "m1")
        receiver.receive("a", 1, 3, "m3")
        self.assertEqual(receiver.receive("a", 1, 1, "m1"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.receive("a", 1, 3, "m3"), Arrival(True, DUPLICATE))
        self.assertEqual(receiver.buffered, 1)

    def test_senders_independent(self) -> None:
        """
        Each sender's stream is ordered on its own.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 2, "a2")
        self.assertEqual(receiver.receive("b", 1, 1, "b1").deliver, ("b1",))
        self.assertEqual(receiver.receive("a", 1, 1, "a1").deliver, ("a1", "a2"))

    def test_restart(self) -> None:
        """
        A newer incarnation resets the stream, dropping the old buffered
        messages; messages of the older incarnation are stale from then on.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 1, "old1")
        receiver.receive("a", 1, 3, "old3")
        self.assertEqual(receiver.receive("a", 2, 2, "new2"), Arrival(True, BUFFERED))
        self.assertEqual(receiver.buffered, 1)
        self.assertEqual(receiver.receive("a", 1, 2, "old2"), Arrival(True, STALE))
        self.assertEqual(receiver.receive("a", 2, 1, "new1").deliver, ("new1", "new2"))

    def test_new_stream_generation(self) -> None:
        """
        A newer stream generation of the same incarnation resets too.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 1, "x", stream_id=1)
        receiver.receive("a", 1, 2, "x", stream_id=1)
        self.assertEqual(receiver.receive("a", 1, 1, "y", stream_id=2).deliver, ("y",))
        self.assertEqual(receiver.receive("a", 1, 3, "x", stream_id=1).reason, STALE)

    def test_buffer_full(self) -> None:
        """
        When the buffer (shared by all senders) is full, early messages are
        refused -- not taken, so they are retransmitted -- but the message
        a stream expects next is always taken.
        """
        receiver = FifoReceiver(max_buffer=2)
        receiver.receive("a", 1, 3, "a3")
        receiver.receive("b", 1, 2, "b2")
        self.assertEqual(receiver.receive("a", 1, 4, "a4"), Arrival(False, BUFFER_FULL))
        self.assertEqual(receiver.receive("c", 1, 2, "c2"), Arrival(False, BUFFER_FULL))
        self.assertEqual(receiver.receive("c", 1, 1, "c1").deliver, ("c1",))
        self.assertEqual(receiver.receive("a", 1, 1, "a1").deliver, ("a1",))
        self.assertEqual(receiver.receive("a", 1, 2, "a2").deliver, ("a2", "a3"))
        self.assertEqual(receiver.receive("a", 1, 4, "a4").deliver, ("a4",))

    def test_zero_buffer(self) -> None:
        """
        With no buffer at all, only in-order messages are taken.
        """
        receiver = FifoReceiver(max_buffer=0)
        self.assertFalse(receiver.receive("a", 1, 2, "a2").taken)
        self.assertTrue(receiver.receive("a", 1, 1, "a1").taken)

    def test_too_many_streams(self) -> None:
        """
        Beyond C{max_streams} senders, a new sender is refused while every
        tracked sender is a member, until one is forgotten.
        """
        receiver = FifoReceiver(max_streams=1)
        receiver.set_members(["a", "b"])
        receiver.receive("a", 1, 1, "a1")
        self.assertEqual(receiver.receive("b", 1, 1, "b1"), Arrival(False, TOO_MANY_STREAMS))
        self.assertEqual(receiver.forget("a"), 0)
        self.assertEqual(receiver.receive("b", 1, 1, "b1").deliver, ("b1",))

    def test_room_made_from_non_members(self) -> None:
        """
        A new sender beyond C{max_streams} makes room by forgetting a
        sender that is not a member: the one that left the members longest
        ago, before those that never were members; members are kept.
        """
        receiver = FifoReceiver(max_streams=3)
        receiver.set_members(["a", "b", "c"])
        for sender in ("a", "b", "c"):
            receiver.receive(sender, 1, 2, sender + "2")
        receiver.set_members(["a", "c"])  # b left
        receiver.set_members(["c"])  # then a
        self.assertEqual(receiver.receive("x", 1, 1, "x1").deliver, ("x1",))
        self.assertIsNone(receiver.expected("b"))
        self.assertEqual(receiver.buffered, 2)
        self.assertEqual(receiver.receive("y", 1, 1, "y1").deliver, ("y1",))
        self.assertIsNone(receiver.expected("a"))
        # x never was a member; c is one.
        self.assertEqual(receiver.receive("z", 1, 1, "z1").deliver, ("z1",))
        self.assertIsNone(receiver.expected("x"))
        self.assertEqual(receiver.expected("c"), 1)
        self.assertEqual(receiver.buffered, 1)
        # A sender that comes back is a member again: never forgotten.
        receiver.set_members(["c", "y", "z"])
        self.assertEqual(receiver.receive("w", 1, 1, "w1"), Arrival(False, TOO_MANY_STREAMS))

    def test_sender_that_left_resumes_its_stream(self) -> None:
        """
        A sender that left the members keeps its stream, what was buffered
        of it included: when it carries on with the same stream (it never
        saw this node leave), whose C{first} still lies below messages
        taken before, every message is delivered in order.
        """
        receiver = FifoReceiver()
        receiver.set_members(["a", "me"])
        receiver.receive("a", 1, 1, "a1", first=1)
        # a2 is lost on the way; a3 and a4 are taken (and acknowledged).
        receiver.receive("a", 1, 3, "a3", first=2)
        receiver.receive("a", 1, 4, "a4", first=2)
        receiver.set_members(["me"])
        self.assertEqual(receiver.buffered, 2)
        receiver.set_members(["a", "me"])
        self.assertEqual(receiver.receive("a", 1, 5, "a5", first=2), Arrival(True, BUFFERED))
        arrival = receiver.receive("a", 1, 2, "a2", first=2)
        self.assertEqual(arrival.deliver, ("a2", "a3", "a4", "a5"))

    def test_stale_first_after_leaving(self) -> None:
        """
        A retransmission that carries a C{first} from before messages were
        delivered does not take a sender that left back: the stream goes on
        where it stood.
        """
        receiver = FifoReceiver()
        receiver.set_members(["a", "me"])
        for seq in (1, 2):
            receiver.receive("a", 1, seq, f"a{seq}", first=1)
        receiver.set_members(["me"])
        self.assertEqual(receiver.receive("a", 1, 3, "a3", first=1).deliver, ("a3",))

    def test_forget(self) -> None:
        """
        L{FifoReceiver.forget} drops the sender's stream and its buffered
        messages.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 2, "a2")
        receiver.receive("a", 1, 3, "a3")
        self.assertEqual(receiver.forget("a"), 2)
        self.assertEqual(receiver.buffered, 0)
        self.assertIsNone(receiver.expected("a"))
        self.assertEqual(receiver.forget("a"), 0)

    def test_first_skips_given_up(self) -> None:
        """
        When the sender settled messages this receiver never took (their
        reliable send failed), C{first} lets the stream move past them:
        what was buffered below C{first} is delivered in order, the rest is
        skipped.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 1, "a1")
        receiver.receive("a", 1, 3, "a3")
        arrival = receiver.receive("a", 1, 6, "a6", first=5)
        self.assertEqual(arrival, Arrival(True, BUFFERED, ("a3",)))
        self.assertEqual(receiver.skipped, 2)  # 2 and 4
        self.assertEqual(receiver.expected("a"), 5)
        self.assertEqual(receiver.receive("a", 1, 5, "a5", first=5).deliver, ("a5", "a6"))

    def test_first_releases_in_order(self) -> None:
        """
        A message at C{first} delivers what it releases, then itself.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 2, "a2")
        arrival = receiver.receive("a", 1, 3, "a3", first=3)
        self.assertEqual(arrival, Arrival(True, DELIVERED, ("a2", "a3")))

    def test_first_on_duplicate(self) -> None:
        """
        A duplicate can still carry a C{first} that releases messages.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 1, "a1")
        receiver.receive("a", 1, 3, "a3")
        arrival = receiver.receive("a", 1, 3, "a3", first=3)
        self.assertEqual(arrival, Arrival(True, DUPLICATE, ("a3",)))

    def test_unknown_stream_starts_at_first(self) -> None:
        """
        A stream this receiver does not know (it forgot the sender) is
        picked up at C{first} instead of waiting for messages it took
        before.
        """
        receiver = FifoReceiver()
        self.assertEqual(receiver.receive("a", 1, 8, "a8", first=7), Arrival(True, BUFFERED))
        self.assertEqual(receiver.receive("a", 1, 7, "a7", first=7).deliver, ("a7", "a8"))

    def test_stale_first_is_harmless(self) -> None:
        """
        A retransmission carries the C{first} of its first transmission,
        which may be lower than what the receiver knows: no effect.
        """
        receiver = FifoReceiver()
        receiver.receive("a", 1, 5, "a5", first=5)
        self.assertEqual(receiver.receive("a", 1, 6, "a6", first=1).deliver, ("a6",))

    def test_malformed(self) -> None:
        """
        Numbers out of range are protocol violations.
        """
        receiver = FifoReceiver()
        bad: list[dict[str, Any]] = [
            {"seq": 0},
            {"seq": True},
            {"seq": "1"},
            {"incarnation": -1},
            {"stream_id": 1.5},
            {"first": 0},
            {"seq": 2, "first": 3},
        ]
        for kwargs in bad:
            args: dict[str, Any] = {"incarnation": 1, "seq": 1, "stream_id": 0, "first": 1}
            args.update(kwargs)
            with self.assertRaises(ProtocolViolation, msg=repr(kwargs)) as caught:
                receiver.receive("a", payload="x", **args)
            self.assertEqual(caught.exception.reason, "bad_fifo_stamp")

    def test_validation(self) -> None:
        """
        Bounds must be in range.
        """
        self.assertRaises(ValueError, FifoReceiver, max_buffer=-1)
        self.assertRaises(ValueError, FifoReceiver, max_streams=0)


def _run(
    receiver: FifoReceiver, arrivals: list[tuple[str, int, int, Any, int]]
) -> dict[str, list[Any]]:
    """
    Offer every arrival; a refused one is retransmitted later (appended
    again). Return what was delivered, per sender.
    """
    delivered: dict[str, list[Any]] = {}
    queue = list(arrivals)
    steps = 0
    while queue:
        steps += 1
        assert steps < 100000, "no progress"
        sender, incarnation, seq, payload, first = queue.pop(0)
        arrival = receiver.receive(sender, incarnation, seq, payload, first=first)
        delivered.setdefault(sender, []).extend(arrival.deliver)
        if not arrival.taken:
            queue.append((sender, incarnation, seq, payload, first))
    return delivered


class FifoPropertyTests(SynchronousTestCase):
    """
    Properties of L{FifoReceiver} over arbitrary arrival orders.
    """

    @PROPERTY
    @given(
        counts=st.dictionaries(
            st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=25), min_size=1
        ),
        seed=st.integers(min_value=0, max_value=2**32),
        duplication=st.floats(min_value=0, max_value=1),
        max_buffer=st.integers(min_value=0, max_value=80),
    )
    def test_delivers_exactly_the_sent_sequence(
        self, counts: dict[str, int], seed: int, duplication: float, max_buffer: int
    ) -> None:
        """
        Whatever the permutation and duplication of arrivals, each sender's
        messages are delivered exactly once, in send order; within the
        buffer bound nothing is refused, beyond it refused messages are
        retransmitted and the result is the same.
        """
        rng = random.Random(seed)
        sent = {
            sender: [f"{sender}{n}" for n in range(1, count + 1)]
            for sender, count in counts.items()
        }
        arrivals = [
            (sender, 7, n, f"{sender}{n}", 1)
            for sender, count in counts.items()
            for n in range(1, count + 1)
            for _ in range(2 if rng.random() < duplication else 1)
        ]
        rng.shuffle(arrivals)
        receiver = FifoReceiver(max_buffer=max_buffer)
        refused: list[Arrival] = []
        original = receiver.receive

        def spy(*args: Any, **kwargs: Any) -> Arrival:
            arrival = original(*args, **kwargs)
            if not arrival.taken:
                refused.append(arrival)
            return arrival

        receiver.receive = spy  # type: ignore[method-assign]
        delivered = _run(receiver, arrivals)
        for sender, messages in sent.items():
            self.assertEqual(delivered.get(sender, []), messages)
        self.assertEqual(receiver.buffered, 0)
        if max_buffer >= sum(counts.values()):
            self.assertEqual(refused, [])

    @PROPERTY
    @given(
        before=st.integers(min_value=0, max_value=15),
        after=st.integers(min_value=0, max_value=15),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_restart(self, before: int, after: int, seed: int) -> None:
        """
        When the sender restarts, whatever the interleaving, the receiver
        delivers a gap-free prefix of the old incarnation's messages, then
        all of the new incarnation's, in order.
        """
        rng = random.Random(seed)
        arrivals = [("a", 1, n, ("old", n), 1) for n in range(1, before + 1)]
        arrivals += [("a", 2, n, ("new", n), 1) for n in range(1, after + 1)]
        rng.shuffle(arrivals)
        delivered = _run(FifoReceiver(max_buffer=40), arrivals).get("a", [])
        old = [n for kind, n in delivered if kind == "old"]
        new = [n for kind, n in delivered if kind == "new"]
        self.assertEqual(old, list(range(1, len(old) + 1)))
        self.assertEqual(new, list(range(1, after + 1)))
        self.assertEqual(delivered, [("old", n) for n in old] + [("new", n) for n in new])

    @PROPERTY
    @given(
        count=st.integers(min_value=1, max_value=30),
        seed=st.integers(min_value=0, max_value=2**32),
        give_up=st.floats(min_value=0, max_value=0.5),
    )
    def test_gives_up_only_on_settled(self, count: int, seed: int, give_up: float) -> None:
        """
        With a L{FifoSender} whose sends are either taken or given up (and
        settled either way), the receiver delivers in order, skipping only
        messages that were given up, and delivers every message taken.
        """
        rng = random.Random(seed)
        sender = FifoSender(incarnation=1)
        receiver = FifoReceiver(max_buffer=count)
        stamps = [sender.stamp("r") for _ in range(count)]
        pending = list(range(count))
        rng.shuffle(pending)
        given_up: set[int] = set()
        taken: set[int] = set()
        delivered: list[int] = []
        while pending:
            index = pending.pop()
            if rng.random() < give_up:
                given_up.add(index)
            else:
                # Every (re)transmission carries the stamp it was given
                # when first sent, with the first of that moment.
                stamp = stamps[index]
                arrival = receiver.receive(
                    "s", stamp.incarnation, stamp.seq, index, stamp.stream_id, stamp.first
                )
                delivered.extend(arrival.deliver)
                if arrival.taken:
                    taken.add(index)
                else:
                    pending.insert(0, index)
                    continue
            sender.settle("r", stamps[index])
        # A final message carries the up-to-date first.
        last = sender.stamp("r")
        arrival = receiver.receive("s", 1, last.seq, "last", last.stream_id, last.first)
        delivered.extend(arrival.deliver)
        self.assertEqual(delivered[-1], "last")
        delivered.pop()
        self.assertEqual(delivered, sorted(delivered))
        self.assertEqual(set(delivered), taken)
        # (A stream picked up at first does not count what lies below it.)
        self.assertLessEqual(receiver.skipped, len(given_up))
