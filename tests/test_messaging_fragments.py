"""
Tests for L{clustron.messaging.fragments}.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.config import MessagingConfig, WireConfig
from clustron.errors import MessageTooLarge, ProtocolViolation, QueueFull
from clustron.messaging.fragments import (
    FairQueue,
    Fragment,
    Fragmenter,
    Reassembler,
)
from clustron.messaging.interfaces import IFrameScheduler

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


class FragmentTests(SynchronousTestCase):
    """
    L{Fragment}.
    """

    def test_validation(self) -> None:
        """
        Fields are checked.
        """
        Fragment("m", 0, 1, 0, b"")
        for args in [
            ("", 0, 1, 1, b"x"),
            ("m", -1, 2, 2, b"x"),
            ("m", 2, 2, 2, b"x"),
            ("m", 0, 0, 1, b"x"),
            ("m", 0, 1, 0, b"x"),
            ("m", 0, 2, 2, b""),
            ("m", 0, 1, 1, "x"),
            ("m", True, 2, 2, b"x"),
        ]:
            self.assertRaises(ValueError, Fragment, *args)

    def test_wire(self) -> None:
        """
        L{Fragment.to_wire} writes what L{Fragment.from_wire} reads;
        malformed input is a protocol violation.
        """
        fragment = Fragment("n1:1:2", 1, 3, 10, b"abc")
        self.assertEqual(Fragment.from_wire(fragment.to_wire()), fragment)
        wire = fragment.to_wire()
        for bad in [None, {}, {**wire, "index": 3}, {**wire, "data": 1}]:
            with self.assertRaises(ProtocolViolation, msg=repr(bad)) as caught:
                Fragment.from_wire(bad)
            self.assertEqual(caught.exception.reason, "bad_fragment")

    def test_repr_hides_data(self) -> None:
        """
        The repr shows the data's size, not its bytes.
        """
        self.assertIn("<3 bytes>", repr(Fragment("m", 0, 1, 3, b"abc")))


class FragmenterTests(SynchronousTestCase):
    """
    L{Fragmenter}.
    """

    def test_defaults(self) -> None:
        """
        Sizes default to the messaging configuration's, and
        L{Fragmenter.from_config} reads them from a config.
        """
        config = MessagingConfig()
        fragmenter = Fragmenter()
        self.assertEqual(fragmenter.fragment_bytes, config.fragment_bytes)
        self.assertEqual(fragmenter.max_message_bytes, config.max_message_bytes)
        other = Fragmenter.from_config(MessagingConfig(fragment_bytes=5, max_message_bytes=50))
        self.assertEqual((other.fragment_bytes, other.max_message_bytes), (5, 50))

    def test_split(self) -> None:
        """
        A body is cut into pieces of C{fragment_bytes}, the last one
        shorter.
        """
        fragments = Fragmenter(4, 100).split("m", b"abcdefghij")
        self.assertEqual([f.data for f in fragments], [b"abcd", b"efgh", b"ij"])
        self.assertEqual([f.index for f in fragments], [0, 1, 2])
        self.assertEqual({(f.count, f.total, f.msg_id) for f in fragments}, {(3, 10, "m")})

    def test_exact_multiple(self) -> None:
        """
        A body of a multiple of C{fragment_bytes} has no empty last piece.
        """
        self.assertEqual(len(Fragmenter(4, 100).split("m", b"abcdefgh")), 2)

    def test_small_and_empty(self) -> None:
        """
        A body that fits is one fragment; so is an empty body.
        """
        self.assertEqual(Fragmenter(4, 100).split("m", b"abc"), [Fragment("m", 0, 1, 3, b"abc")])
        self.assertEqual(Fragmenter(4, 100).split("m", b""), [Fragment("m", 0, 1, 0, b"")])

    def test_too_large(self) -> None:
        """
        A body over C{max_message_bytes} raises MessageTooLarge naming the
        message, its size and the limit; one at the limit is fine.
        """
        fragmenter = Fragmenter(4, 10)
        self.assertEqual(len(fragmenter.split("m", b"x" * 10)), 3)
        with self.assertRaises(MessageTooLarge) as caught:
            fragmenter.split("n1:1:7", b"x" * 11)
        message = str(caught.exception)
        for part in ["n1:1:7", "11 bytes", "messaging.max_message_bytes", "10 bytes"]:
            self.assertIn(part, message)
        self.assertRaises(MessageTooLarge, fragmenter.check, "m", 11)

    def test_validation(self) -> None:
        """
        Sizes must be at least 1.
        """
        self.assertRaises(ValueError, Fragmenter, 0, 10)
        self.assertRaises(ValueError, Fragmenter, 10, 0)


class ReassemblerTests(SynchronousTestCase):
    """
    L{Reassembler}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fragmenter = Fragmenter(4, 100)
        self.reassembler = Reassembler(
            self.clock, max_pending_bytes=100, timeout=10, max_message_bytes=100
        )

    def test_in_order(self) -> None:
        """
        The last fragment returns the whole body.
        """
        fragments = self.fragmenter.split("m", b"abcdefghij")
        self.assertIsNone(self.reassembler.add("a", fragments[0]))
        self.assertIsNone(self.reassembler.add("a", fragments[1]))
        self.assertEqual(self.reassembler.reserved, 10)
        self.assertEqual(self.reassembler.add("a", fragments[2]), b"abcdefghij")
        self.assertEqual(len(self.reassembler), 0)
        self.assertEqual(self.reassembler.reserved, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_any_order_and_duplicates(self) -> None:
        """
        Fragments may come in any order; duplicates are ignored.
        """
        fragments = self.fragmenter.split("m", b"abcdefghij")
        self.assertIsNone(self.reassembler.add("a", fragments[2]))
        self.assertIsNone(self.reassembler.add("a", fragments[2]))
        self.assertIsNone(self.reassembler.add("a", fragments[0]))
        self.assertEqual(self.reassembler.add("a", fragments[1]), b"abcdefghij")

    def test_single(self) -> None:
        """
        A message in one fragment passes straight through.
        """
        self.assertEqual(self.reassembler.add("a", Fragment("m", 0, 1, 2, b"hi")), b"hi")
        self.assertEqual(len(self.reassembler), 0)

    def test_sources_separate(self) -> None:
        """
        The same message id from two sources is two messages.
        """
        fragments = self.fragmenter.split("m", b"abcdefgh")
        self.reassembler.add("a", fragments[0])
        self.assertIsNone(self.reassembler.add("b", fragments[1]))
        self.assertEqual(len(self.reassembler), 2)

    def test_too_large(self) -> None:
        """
        A fragment announcing a body over C{max_message_bytes} is a
        protocol violation naming the size and the limit.
        """
        with self.assertRaises(ProtocolViolation) as caught:
            self.reassembler.add("a", Fragment("m", 0, 2, 101, b"x"))
        self.assertEqual(caught.exception.reason, "message_too_large")
        self.assertIn("101 bytes", str(caught.exception))
        self.assertIn("100", str(caught.exception))

    def test_contradictions(self) -> None:
        """
        Fragments that contradict one another are protocol violations, and
        the message is dropped.
        """
        self.reassembler.add("a", Fragment("m", 0, 3, 10, b"abcd"))
        with self.assertRaises(ProtocolViolation):
            self.reassembler.add("a", Fragment("m", 1, 2, 10, b"efgh"))
        self.assertEqual((len(self.reassembler), self.reassembler.reserved), (0, 0))
        self.reassembler.add("a", Fragment("m", 0, 2, 5, b"abcd"))
        with self.assertRaises(ProtocolViolation):
            self.reassembler.add("a", Fragment("m", 1, 2, 5, b"efgh"))
        self.reassembler.add("a", Fragment("m", 0, 2, 5, b"ab"))
        with self.assertRaises(ProtocolViolation):
            self.reassembler.add("a", Fragment("m", 1, 2, 5, b"cd"))
        with self.assertRaises(ProtocolViolation):
            self.reassembler.add("a", Fragment("m", 0, 1, 5, b"ab"))
        with self.assertRaises(ProtocolViolation):
            self.reassembler.add("a", Fragment("m", 0, 5, 3, b"a"))
        self.assertEqual((len(self.reassembler), self.reassembler.reserved), (0, 0))

    def test_timeout(self) -> None:
        """
        An incomplete message is dropped after C{timeout} seconds without a
        new fragment; each fragment restarts the timer.
        """
        fragments = self.fragmenter.split("m", b"abcdefghij")
        self.reassembler.add("a", fragments[0])
        self.clock.advance(8)
        self.reassembler.add("a", fragments[1])
        self.clock.advance(8)
        self.assertEqual(len(self.reassembler), 1)
        self.clock.advance(2)
        self.assertEqual((len(self.reassembler), self.reassembler.reserved), (0, 0))
        self.assertEqual(self.reassembler.timed_out, 1)
        self.assertIsNone(self.reassembler.add("a", fragments[2]))

    def test_budget(self) -> None:
        """
        A message is admitted only if its whole body fits in what is left of
        C{max_pending_bytes}; one that does not is dropped, and admitted
        ones complete.
        """
        fragmenter = Fragmenter(40, 100)
        big = fragmenter.split("big", b"x" * 80)
        other = fragmenter.split("other", b"y" * 30 + b"z" * 20)
        self.reassembler.add("a", big[0])
        self.assertIsNone(self.reassembler.add("a", other[0]))
        self.assertIsNone(self.reassembler.add("a", other[1]))
        self.assertEqual(self.reassembler.dropped, 2)
        self.assertEqual(self.reassembler.reserved, 80)
        self.assertEqual(self.reassembler.add("a", big[1]), b"x" * 80)
        self.assertIsNone(self.reassembler.add("a", other[0]))
        self.assertEqual(self.reassembler.add("a", other[1]), b"y" * 30 + b"z" * 20)

    def test_message_count_bound(self) -> None:
        """
        At most C{max_pending_messages} incomplete messages are held.
        """
        reassembler = Reassembler(self.clock, 100, 10, 100, max_pending_messages=1)
        reassembler.add("a", Fragment("m1", 0, 2, 2, b"a"))
        self.assertIsNone(reassembler.add("a", Fragment("m2", 0, 2, 2, b"a")))
        self.assertEqual((len(reassembler), reassembler.dropped), (1, 1))

    def test_forget_and_stop(self) -> None:
        """
        L{Reassembler.forget} drops one source's messages;
        L{Reassembler.stop} drops everything and cancels the timers.
        """
        self.reassembler.add("a", Fragment("m1", 0, 2, 2, b"a"))
        self.reassembler.add("b", Fragment("m1", 0, 2, 2, b"a"))
        self.assertEqual(self.reassembler.forget("a"), 1)
        self.assertEqual(len(self.reassembler), 1)
        self.reassembler.stop()
        self.assertEqual((len(self.reassembler), self.reassembler.reserved), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_validation(self) -> None:
        """
        Bounds must be in range, and the budget must hold the largest
        message.
        """
        self.assertRaises(ValueError, Reassembler, self.clock, 100, 0, 100)
        self.assertRaises(ValueError, Reassembler, self.clock, 99, 10, 100)
        self.assertRaises(ValueError, Reassembler, self.clock, 100, 10, 100, 0)

    @PROPERTY
    @given(
        body=st.binary(max_size=600),
        fragment_bytes=st.integers(min_value=1, max_value=64),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_roundtrip_any_order(self, body: bytes, fragment_bytes: int, seed: int) -> None:
        """
        Whatever the size and the arrival order, the body comes back whole,
        exactly once, at the last fragment, and nothing is left behind.
        """
        fragments = Fragmenter(fragment_bytes, 1000).split("m", body)
        self.assertTrue(all(len(f.data) <= fragment_bytes for f in fragments))
        random.Random(seed).shuffle(fragments)
        clock = Clock()
        reassembler = Reassembler(clock, 1000, 5, 1000)
        results = [reassembler.add("a", f) for f in fragments]
        self.assertEqual(results[-1], body)
        self.assertEqual(results[:-1], [None] * (len(fragments) - 1))
        self.assertEqual((len(reassembler), reassembler.reserved), (0, 0))
        self.assertEqual(clock.getDelayedCalls(), [])

    @PROPERTY
    @given(
        bodies=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5),
        fragment_bytes=st.integers(min_value=1, max_value=32),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_interleaved_with_duplicates(
        self, bodies: list[bytes], fragment_bytes: int, seed: int
    ) -> None:
        """
        Fragments of several messages, interleaved and duplicated, give back
        each body, and only those bodies.
        """
        rng = random.Random(seed)
        fragmenter = Fragmenter(fragment_bytes, 1000)
        arrivals: list[Fragment] = []
        for index, body in enumerate(bodies):
            for fragment in fragmenter.split(f"m{index}", body):
                arrivals.extend([fragment] * rng.randint(1, 2))
        rng.shuffle(arrivals)
        reassembler = Reassembler(Clock(), 5000, 5, 1000)
        results: dict[str, list[bytes]] = {}
        for fragment in arrivals:
            whole = reassembler.add("a", fragment)
            if whole is not None:
                results.setdefault(fragment.msg_id, []).append(whole)
        for index, body in enumerate(bodies):
            self.assertIn(f"m{index}", results)
            self.assertEqual(set(results[f"m{index}"]), {body})


class FairQueueTests(SynchronousTestCase):
    """
    L{FairQueue}.
    """

    def drain(self, queue: FairQueue) -> list[bytes]:
        frames: list[bytes] = []
        while (frame := queue.pop()) is not None:
            frames.append(frame)
        return frames

    def test_interface(self) -> None:
        """
        It provides L{IFrameScheduler}.
        """
        self.assertTrue(verifyObject(IFrameScheduler, FairQueue()))

    def test_defaults(self) -> None:
        """
        The data lane's bounds default to the wire's send queue bounds.
        """
        wire = WireConfig()
        queue = FairQueue()
        queue.push_all("s", [b"x"] * wire.send_queue_frames)
        self.assertRaises(QueueFull, queue.push, "s", b"x")

    def test_empty(self) -> None:
        """
        An empty queue pops None.
        """
        queue = FairQueue()
        self.assertIsNone(queue.pop())
        self.assertEqual((len(queue), queue.queued_frames, queue.queued_bytes), (0, 0, 0))

    def test_control_first(self) -> None:
        """
        Control frames leave before any data frame, in their own order.
        """
        queue = FairQueue()
        queue.push_all("big", [b"f1", b"f2", b"f3"])
        queue.push(None, b"hb1", control=True)
        queue.push(None, b"ack", control=True)
        self.assertEqual(self.drain(queue), [b"hb1", b"ack", b"f1", b"f2", b"f3"])

    def test_round_robin(self) -> None:
        """
        Streams take turns, one frame each; each stream keeps its order.
        """
        queue = FairQueue()
        queue.push_all("a", [b"a1", b"a2", b"a3"])
        queue.push("b", b"b1")
        queue.push_all("c", [b"c1", b"c2"])
        self.assertEqual(self.drain(queue), [b"a1", b"b1", b"c1", b"a2", b"c2", b"a3"])

    def test_heartbeat_not_held_up(self) -> None:
        """
        A heartbeat queued behind a large message's many fragments is the
        next frame out, and a small message on another stream waits one
        fragment at most.
        """
        queue = FairQueue()
        queue.push_all("big", [b"x" * 100] * 500)
        queue.pop()
        queue.push(None, b"heartbeat", control=True)
        queue.push("small", b"hello")
        self.assertEqual(queue.pop(), b"heartbeat")
        self.assertIn(b"hello", [queue.pop(), queue.pop()])

    def test_data_bounds(self) -> None:
        """
        The data lane refuses, with QueueFull, frames beyond its frame or
        byte bound; nothing is queued by a refused push.
        """
        queue = FairQueue(max_frames=3, max_bytes=10)
        queue.push_all("a", [b"1234", b"5678"])
        with self.assertRaises(QueueFull) as caught:
            queue.push("b", b"abc")
        self.assertIn("10 bytes", str(caught.exception))
        queue.push("b", b"ab")
        self.assertRaises(QueueFull, queue.push, "b", b"")
        self.assertEqual((queue.queued_frames, queue.queued_bytes), (3, 10))

    def test_push_all_atomic(self) -> None:
        """
        L{FairQueue.push_all} queues all frames or none.
        """
        queue = FairQueue(max_frames=3, max_bytes=100)
        queue.push("a", b"x")
        self.assertRaises(QueueFull, queue.push_all, "b", [b"1", b"2", b"3"])
        self.assertEqual(self.drain(queue), [b"x"])
        queue.push_all("b", [])
        self.assertEqual(len(queue), 0)

    def test_control_bounds_separate(self) -> None:
        """
        A full data lane does not keep control frames out; the control lane
        has bounds of its own.
        """
        queue = FairQueue(max_frames=1, max_bytes=10, max_control_frames=2, max_control_bytes=5)
        queue.push("a", b"x")
        self.assertRaises(QueueFull, queue.push, "a", b"y")
        queue.push(None, b"hb", control=True)
        self.assertRaises(QueueFull, queue.push, None, b"four", control=True)
        queue.push(None, b"hb", control=True)
        self.assertRaises(QueueFull, queue.push, None, b"", control=True)
        self.assertEqual((queue.queued_frames, queue.queued_bytes), (3, 5))

    def test_discard(self) -> None:
        """
        L{FairQueue.discard} drops one stream's frames.
        """
        queue = FairQueue()
        queue.push_all("a", [b"a1", b"a2"])
        queue.push("b", b"b1")
        self.assertEqual(queue.discard("a"), 2)
        self.assertEqual(queue.discard("a"), 0)
        self.assertEqual(queue.queued_bytes, 2)
        self.assertEqual(self.drain(queue), [b"b1"])

    def test_validation(self) -> None:
        """
        Bounds must be at least 1.
        """
        for name in ["max_frames", "max_bytes", "max_control_frames", "max_control_bytes"]:
            kwargs: dict[str, Any] = {name: 0}
            self.assertRaises(ValueError, FairQueue, **kwargs)

    @PROPERTY
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("push"), st.sampled_from("abc"), st.integers(0, 6)),
                st.tuples(st.just("control"), st.none(), st.integers(0, 3)),
                st.tuples(st.just("pop"), st.none(), st.just(0)),
                st.tuples(st.just("discard"), st.sampled_from("abc"), st.just(0)),
            ),
            max_size=120,
        )
    )
    def test_model(self, operations: list[tuple[str, Any, int]]) -> None:
        """
        Against a simple model: bounds always hold, control frames always
        leave first, streams with frames take turns in the order they became
        busy, each stream's frames leave in order, and the counters are
        exact.
        """
        queue = FairQueue(max_frames=8, max_bytes=30, max_control_frames=3, max_control_bytes=6)
        streams: dict[str, list[bytes]] = {"a": [], "b": [], "c": []}
        control: list[bytes] = []
        turns: list[str] = []  # busy streams, next to be served first
        serial = 0
        for kind, stream, size in operations:
            serial += 1
            frame = serial.to_bytes(2, "big") + b"." * size
            data_frames = sum(len(frames) for frames in streams.values())
            data_bytes = sum(len(f) for frames in streams.values() for f in frames)
            if kind == "push":
                fits = data_frames < 8 and data_bytes + len(frame) <= 30
                try:
                    queue.push(stream, frame)
                except QueueFull:
                    self.assertFalse(fits)
                else:
                    self.assertTrue(fits)
                    streams[stream].append(frame)
                    if stream not in turns:
                        turns.append(stream)
            elif kind == "control":
                fits = len(control) < 3 and sum(map(len, control)) + len(frame) <= 6
                try:
                    queue.push(stream, frame, control=True)
                except QueueFull:
                    self.assertFalse(fits)
                else:
                    self.assertTrue(fits)
                    control.append(frame)
            elif kind == "discard":
                self.assertEqual(queue.discard(stream), len(streams[stream]))
                streams[stream] = []
                if stream in turns:
                    turns.remove(stream)
            else:
                popped = queue.pop()
                if control:
                    self.assertEqual(popped, control.pop(0))
                elif data_frames:
                    owner = turns.pop(0)
                    self.assertEqual(popped, streams[owner].pop(0))
                    if streams[owner]:
                        turns.append(owner)
                else:
                    self.assertIsNone(popped)
            everything = control + [f for frames in streams.values() for f in frames]
            self.assertEqual(queue.queued_frames, len(everything))
            self.assertEqual(queue.queued_bytes, sum(map(len, everything)))
