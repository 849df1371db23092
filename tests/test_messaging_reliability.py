"""
Tests for L{clustron.messaging.reliability}.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.config import MessagingConfig
from clustron.errors import DeliveryFailed, ProtocolViolation, QueueFull, UnknownMember
from clustron.messaging.dedup import DedupWindow
from clustron.messaging.ids import MessageId
from clustron.messaging.interfaces import IReliableReceiver, IReliableSender
from clustron.messaging.reliability import (
    MAX_ACK_IDS,
    ReliableReceiver,
    ReliableSender,
    ack_envelope,
    envelope_id,
    parse_ack,
)

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None)

Sent = list[tuple[str, dict[str, Any]]]


class RecordingClock(Clock):
    """
    A L{Clock} that remembers every delay it was asked to schedule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def callLater(self, delay: float, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        self.delays.append(delay)
        return super().callLater(delay, *args, **kwargs)


def envelope(counter: int, node: str = "me") -> dict[str, Any]:
    return {"id": str(MessageId(node, 1, counter)), "body": counter}


def outcome(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


class SenderTests(SynchronousTestCase):
    """
    L{ReliableSender}.
    """

    def setUp(self) -> None:
        self.clock = RecordingClock()
        self.sent: Sent = []
        self.sender = ReliableSender(
            self.clock,
            lambda to, env: self.sent.append((to, env)),
            retry_initial=0.2,
            retry_max=5.0,
            rng=random.Random(1),
            max_in_flight=2,
            max_pending=1,
        )

    def test_interface(self) -> None:
        """
        It provides L{IReliableSender}.
        """
        self.assertTrue(verifyObject(IReliableSender, self.sender))

    def test_from_config(self) -> None:
        """
        L{ReliableSender.from_config} takes delays and bounds from the
        messaging configuration.
        """
        config = MessagingConfig(retry_initial=1.0, retry_max=2.0, max_in_flight=1)
        sender = ReliableSender.from_config(config, self.clock, lambda to, env: None)
        sender.submit("b", envelope(1))
        sender.submit("b", envelope(2))
        self.assertEqual((sender.in_flight("b"), sender.pending("b")), (1, 1))
        self.failureResultOf(sender.submit("b", envelope(3)), QueueFull)
        self.assertTrue(all(0.1 <= delay <= 1.0 for delay in self.clock.delays))

    def test_validation(self) -> None:
        """
        Out-of-range delays and bounds are refused.
        """
        send = lambda to, env: None  # noqa: E731
        self.assertRaises(ValueError, ReliableSender, self.clock, send, retry_initial=0)
        self.assertRaises(
            ValueError, ReliableSender, self.clock, send, retry_initial=2, retry_max=1
        )
        self.assertRaises(
            ValueError, ReliableSender, self.clock, send, retry_max=float("inf")
        )
        self.assertRaises(ValueError, ReliableSender, self.clock, send, max_in_flight=0)
        self.assertRaises(ValueError, ReliableSender, self.clock, send, max_pending=-1)

    def test_sends_at_once(self) -> None:
        """
        A submitted envelope is transmitted at once, unchanged.
        """
        env = envelope(1)
        d = self.sender.submit("b", env)
        self.assertEqual(self.sent, [("b", env)])
        self.assertNoResult(d)
        self.assertEqual(self.sender.in_flight("b"), 1)

    def test_ack(self) -> None:
        """
        An acknowledgement fires the Deferred with None and stops the
        retransmissions.
        """
        d = self.sender.submit("b", envelope(1))
        self.assertTrue(self.sender.ack("b", MessageId("me", 1, 1)))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.sender.in_flight("b"), 0)
        # The destination's timer is left to lapse (an acknowledgement does
        # not touch it): it retransmits nothing and is not set again.
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ack_by_string(self) -> None:
        """
        An acknowledgement may name the id in its string form.
        """
        d = self.sender.submit("b", envelope(1))
        self.assertTrue(self.sender.ack("b", "me:1:1"))
        self.assertIsNone(self.successResultOf(d))

    def test_one_timer_per_destination(self) -> None:
        """
        However many envelopes are in flight to a destination, one timer
        retransmits them; each keeps its own backoff.
        """
        sender = ReliableSender(
            self.clock,
            lambda to, env: self.sent.append((to, env)),
            retry_initial=0.2,
            retry_max=5.0,
            rng=random.Random(4),
        )
        for n in range(50):
            sender.submit("b", envelope(n))
            self.clock.advance(0.001)
        sender.submit("c", envelope(99))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.clock.advance(0.2)
        self.assertEqual(len(self.sent), 51 + 51)  # everything was retransmitted once
        self.assertEqual(sender.retransmissions, 51)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

    def test_send_reports_through_callback(self) -> None:
        """
        L{ReliableSender.send} reports the outcome to its callback, with the
        context given, exactly once: None when acknowledged.
        """
        outcomes: list[tuple[Any, Any]] = []
        notify = lambda context, error: outcomes.append((context, error))  # noqa: E731
        self.sender.send("b", "me:1:1", {"body": 1}, notify, "ctx")
        self.assertEqual(self.sent, [("b", {"body": 1})])
        self.assertEqual(self.sender.handle_ack_ids("b", ["me:1:1", "me:1:1", "x:1:1"]), 1)
        self.assertEqual(outcomes, [("ctx", None)])

    def test_send_failures_and_cancel(self) -> None:
        """
        The callback learns of a failure (DeliveryFailed) or a cancellation
        (CancelledError); a full queue raises QueueFull and never calls it;
        a key already outstanding is refused.
        """
        outcomes: list[tuple[Any, Any]] = []
        notify = lambda context, error: outcomes.append((context, error))  # noqa: E731
        self.sender.send("b", "k1", {}, notify, 1)
        self.sender.send("b", "k2", {}, notify, 2)
        self.sender.send("b", "k3", {}, notify, 3)
        self.assertRaises(ValueError, self.sender.send, "b", "k3", {}, notify, 3)
        self.assertRaises(QueueFull, self.sender.send, "b", "k4", {}, notify, 4)
        self.assertTrue(self.sender.cancel("b", "k3"))  # a waiting one
        self.assertFalse(self.sender.cancel("b", "k3"))
        self.assertTrue(self.sender.cancel("b", "k1"))  # one in flight
        self.sender.peer_dead("b")
        self.assertEqual([context for context, _ in outcomes], [3, 1, 2])
        self.assertIsInstance(outcomes[0][1], CancelledError)
        self.assertIsInstance(outcomes[1][1], CancelledError)
        self.assertIsInstance(outcomes[2][1], DeliveryFailed)
        self.assertFalse(self.sender.cancel("b", "k2"))

    def test_handle_ack_ids_shape(self) -> None:
        """
        Acknowledged ids must come as a list of at most L{MAX_ACK_IDS}
        strings; their text is not otherwise checked (an id never sent
        acknowledges nothing).
        """
        for bad in [None, "a:1:1", {"a": 1}, [1], ["a:1:1", None], ["a"] * (MAX_ACK_IDS + 1)]:
            with self.assertRaises(ProtocolViolation, msg=repr(bad)) as caught:
                self.sender.handle_ack_ids("b", bad)
            self.assertEqual(caught.exception.reason, "bad_ack")
        self.assertEqual(self.sender.handle_ack_ids("b", ["not an id"]), 0)

    def test_leaves_now(self) -> None:
        """
        L{ReliableSender.leaves_now} says whether a submission would be
        transmitted at once.
        """
        self.assertTrue(self.sender.leaves_now("b"))
        self.sender.submit("b", envelope(1))
        self.assertTrue(self.sender.leaves_now("b"))
        self.sender.submit("b", envelope(2))
        self.assertFalse(self.sender.leaves_now("b"))

    def test_timer_moved_earlier(self) -> None:
        """
        An envelope due for retransmission well before the destination's
        timer (whose earliest envelope backed off to long delays) moves the
        timer earlier.
        """
        self.sender.submit("b", envelope(1))
        for _ in range(5):
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertGreater(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 1)
        self.sender.submit("b", envelope(2))
        (timer,) = self.clock.getDelayedCalls()
        self.assertLessEqual(timer.getTime() - self.clock.seconds(), 0.2)
        count = len(self.sent)
        self.clock.advance(0.2)
        self.assertEqual(self.sent[count:], [("b", envelope(2))])

    def test_retransmission_not_early_nor_much_late(self) -> None:
        """
        Every retransmission comes at or after the delay drawn for it (at
        least half of C{retry_initial} at first), and at most
        C{retry_initial / 4} after it.
        """
        times: dict[str, list[float]] = {}

        def send(to: str, env: dict[str, Any]) -> None:
            times.setdefault(env["id"], []).append(self.clock.seconds())

        sender = ReliableSender(self.clock, send, 0.2, 5.0, random.Random(5))
        for n in range(40):
            sender.submit("b", envelope(n))
            self.clock.advance(0.013)
        for _ in range(400):
            self.clock.advance(0.01)
        for sent in times.values():
            gaps = [later - earlier for earlier, later in zip(sent, sent[1:], strict=False)]
            self.assertGreaterEqual(len(gaps), 3)
            for attempt, gap in enumerate(gaps):
                ceiling = min(5.0, 0.2 * 2**attempt)
                self.assertGreaterEqual(gap, ceiling / 2 - 1e-9)
                self.assertLessEqual(gap, ceiling + 0.05 + 0.01 + 1e-9)  # slack, clock step

    def test_ack_from_another_node(self) -> None:
        """
        Only the destination's acknowledgement counts.
        """
        d = self.sender.submit("b", envelope(1))
        self.assertFalse(self.sender.ack("c", MessageId("me", 1, 1)))
        self.assertFalse(self.sender.ack("b", MessageId("me", 1, 2)))
        self.assertNoResult(d)

    def test_retransmits_until_acked(self) -> None:
        """
        Unacknowledged envelopes are retransmitted, with delays that grow
        but never pass C{retry_max}.
        """
        d = self.sender.submit("b", envelope(1))
        self.clock.advance(0.2)
        self.assertEqual(len(self.sent), 2)
        for _ in range(200):
            self.clock.advance(1)
        self.assertGreater(len(self.sent), 40)
        self.assertEqual(self.sender.retransmissions, len(self.sent) - 1)
        self.assertTrue(all(0.02 <= delay <= 5.0 for delay in self.clock.delays))
        self.assertGreater(max(self.clock.delays), 2.5)  # the ceiling did grow
        self.sender.ack("b", MessageId("me", 1, 1))
        self.successResultOf(d)
        count = len(self.sent)
        self.clock.advance(100)
        self.assertEqual(len(self.sent), count)

    def test_backoff_ceiling_doubles(self) -> None:
        """
        The n-th delay is drawn below C{min(retry_max, retry_initial * 2**n)}.
        """
        self.sender.submit("b", envelope(1))
        for _ in range(12):
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        for attempt, delay in enumerate(self.clock.delays):
            self.assertLessEqual(delay, min(5.0, 0.2 * 2**attempt))

    def test_send_failure_is_a_loss(self) -> None:
        """
        When the send callable raises (no connection, full queue) the
        transmission counts as lost and is retried.
        """
        attempts: list[str] = []

        def send(to: str, env: dict[str, Any]) -> None:
            attempts.append(to)
            if len(attempts) == 1:
                raise UnknownMember("not connected")
            if len(attempts) == 2:
                raise RuntimeError("bug")

        sender = ReliableSender(self.clock, send, rng=random.Random(2))
        d = sender.submit("b", envelope(1))
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertGreaterEqual(len(attempts), 3)
        sender.ack("b", MessageId("me", 1, 1))
        self.successResultOf(d)

    def test_loopback_ack(self) -> None:
        """
        An acknowledgement that arrives during the transmission itself
        leaves no timer behind.
        """
        sender: ReliableSender

        def send(to: str, env: dict[str, Any]) -> None:
            sender.ack(to, MessageId.parse(env["id"]))

        sender = ReliableSender(self.clock, send, rng=random.Random(3))
        self.successResultOf(sender.submit("b", envelope(1)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flow_control(self) -> None:
        """
        Beyond C{max_in_flight} unacknowledged envelopes to one peer,
        submissions wait (untransmitted) up to C{max_pending}, then fail at
        once with QueueFull; an acknowledgement lets the next one go.
        Other peers are not affected.
        """
        d1 = self.sender.submit("b", envelope(1))
        self.sender.submit("b", envelope(2))
        d3 = self.sender.submit("b", envelope(3))
        self.assertEqual([env["body"] for _, env in self.sent], [1, 2])
        self.assertEqual((self.sender.in_flight("b"), self.sender.pending("b")), (2, 1))
        failure = self.failureResultOf(self.sender.submit("b", envelope(4)), QueueFull)
        self.assertIn("max_in_flight", str(failure.value))
        self.assertIn("me:1:4", str(failure.value))
        self.sender.submit("c", envelope(5))
        self.assertEqual(self.sent[-1][0], "c")
        self.sender.ack("b", MessageId("me", 1, 1))
        self.successResultOf(d1)
        self.assertEqual(self.sent[-1], ("b", envelope(3)))
        self.assertEqual((self.sender.in_flight("b"), self.sender.pending("b")), (2, 0))
        self.assertNoResult(d3)

    def test_pending_not_retransmitted(self) -> None:
        """
        A waiting envelope is not transmitted until it gets a slot.
        """
        self.sender.submit("b", envelope(1))
        self.sender.submit("b", envelope(2))
        self.sender.submit("b", envelope(3))
        self.clock.advance(60)
        self.assertNotIn(3, [env["body"] for _, env in self.sent])

    def test_duplicate_submit(self) -> None:
        """
        An id already being sent to a peer cannot be submitted to it again;
        it may be sent to another peer.
        """
        self.sender.submit("b", envelope(1))
        self.assertRaises(ValueError, self.sender.submit, "b", envelope(1))
        self.sender.submit("c", envelope(1))

    def test_bad_envelope(self) -> None:
        """
        An envelope without a valid id is refused.
        """
        self.assertRaises(ValueError, self.sender.submit, "b", {"body": 1})
        self.assertRaises(ValueError, self.sender.submit, "b", {"id": "nope"})
        self.assertRaises(TypeError, self.sender.submit, "b", ["me:1:1"])

    def test_peer_dead(self) -> None:
        """
        When the destination is declared dead everything outstanding to it
        fails with DeliveryFailed naming the message and the peer; nothing
        more is transmitted.
        """
        d1 = self.sender.submit("b", envelope(1))
        d2 = self.sender.submit("b", envelope(2))
        d3 = self.sender.submit("b", envelope(3))
        other = self.sender.submit("c", envelope(4))
        self.sender.peer_dead("b")
        for counter, d in enumerate((d1, d2, d3), 1):
            failure = self.failureResultOf(d, DeliveryFailed)
            self.assertIn("b was declared dead", str(failure.value))
            self.assertIn(f"message me:1:{counter} to b", str(failure.value))
        self.assertNoResult(other)
        count = len(self.sent)
        self.clock.advance(60)
        self.assertEqual({to for to, _ in self.sent[count:]}, {"c"})
        self.assertEqual(self.sender.in_flight("b"), 0)

    def test_peer_left(self) -> None:
        """
        When the destination leaves, its sends fail with DeliveryFailed.
        """
        d = self.sender.submit("b", envelope(1))
        self.sender.peer_left("b")
        failure = self.failureResultOf(d, DeliveryFailed)
        self.assertIn("left the view", str(failure.value))
        self.sender.peer_left("b")

    def test_failure_callback_can_resubmit(self) -> None:
        """
        A callback run by the failure may submit again to the same peer.
        """
        d = self.sender.submit("b", envelope(1))
        d.addErrback(lambda f: self.sender.submit("b", envelope(2)))
        self.sender.peer_dead("b")
        self.assertEqual(self.sender.in_flight("b"), 1)

    def test_cancel(self) -> None:
        """
        Cancelling stops the retransmissions and frees the slot.
        """
        d1 = self.sender.submit("b", envelope(1))
        self.sender.submit("b", envelope(2))
        d3 = self.sender.submit("b", envelope(3))
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(self.sent[-1], ("b", envelope(3)))
        self.assertNoResult(d3)
        self.clock.advance(60)
        self.assertNotIn(("b", envelope(1)), self.sent[3:])
        self.assertFalse(self.sender.ack("b", MessageId("me", 1, 1)))

    def test_cancel_pending(self) -> None:
        """
        A waiting envelope can be cancelled; it is never transmitted.
        """
        self.sender.submit("b", envelope(1))
        self.sender.submit("b", envelope(2))
        d3 = self.sender.submit("b", envelope(3))
        d3.cancel()
        self.failureResultOf(d3, CancelledError)
        self.assertEqual(self.sender.pending("b"), 0)
        self.sender.ack("b", MessageId("me", 1, 1))
        self.assertNotIn(3, [env["body"] for _, env in self.sent])

    def test_stop(self) -> None:
        """
        L{ReliableSender.stop} fails everything and leaves no timer.
        """
        d1 = self.sender.submit("b", envelope(1))
        d2 = self.sender.submit("c", envelope(2))
        self.sender.stop()
        self.failureResultOf(d1, DeliveryFailed)
        self.failureResultOf(d2, DeliveryFailed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handle_ack(self) -> None:
        """
        An ack envelope acknowledges every id it lists.
        """
        d1 = self.sender.submit("b", envelope(1))
        d2 = self.sender.submit("b", envelope(2))
        acked = self.sender.handle_ack(
            "b", ack_envelope([MessageId("me", 1, 1), MessageId("me", 1, 2), MessageId("x", 1, 1)])
        )
        self.assertEqual(acked, 2)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertRaises(ProtocolViolation, self.sender.handle_ack, "b", {"type": "ack"})

    @PROPERTY
    @given(
        seed=st.integers(min_value=0, max_value=2**32),
        count=st.integers(min_value=1, max_value=12),
        loss=st.floats(min_value=0.0, max_value=0.6),
        retry_initial=st.floats(min_value=0.01, max_value=1.0),
        ceiling=st.floats(min_value=1.0, max_value=8.0),
    )
    def test_retries_until_acked(
        self, seed: int, count: int, loss: float, retry_initial: float, ceiling: float
    ) -> None:
        """
        Over a link that loses envelopes and acknowledgements alike, every
        submission is eventually acknowledged, every message is taken
        exactly once, and no retransmission delay passes C{retry_max}.
        """
        retry_max = retry_initial * ceiling
        link = random.Random(seed)
        clock = RecordingClock()
        taken: list[int] = []
        sender: ReliableSender
        receiver: ReliableReceiver

        def admit(env: dict[str, Any]) -> bool:
            taken.append(env["body"])
            return True

        def to_receiver(to: str, env: dict[str, Any]) -> None:
            if link.random() >= loss:
                receiver.receive("a", env, admit=admit)

        def to_sender(to: str, env: dict[str, Any]) -> None:
            if link.random() >= loss:
                sender.handle_ack("b", env)

        sender = ReliableSender(
            clock, to_receiver, retry_initial, retry_max, random.Random(seed), max_in_flight=4
        )
        receiver = ReliableReceiver(clock, to_sender, DedupWindow(64))
        results = [outcome(sender.submit("b", envelope(n, "a"))) for n in range(count)]
        for _ in range(20000):
            if all(results):
                break
            clock.advance(retry_initial / 2)
        self.assertEqual(results, [[None]] * count)
        self.assertEqual(sorted(taken), list(range(count)))
        self.assertTrue(all(0 <= delay <= retry_max for delay in clock.delays))
        # Once everything is acknowledged the timers lapse.
        clock.advance(retry_max)
        self.assertEqual(clock.getDelayedCalls(), [])


class AckEnvelopeTests(SynchronousTestCase):
    """
    L{ack_envelope}, L{parse_ack} and L{envelope_id}.
    """

    def test_roundtrip(self) -> None:
        """
        L{parse_ack} reads what L{ack_envelope} writes.
        """
        ids = [MessageId("a", 1, 2), MessageId("b:1", 3, 4)]
        self.assertEqual(parse_ack(ack_envelope(ids)), ids)

    def test_malformed(self) -> None:
        """
        Malformed ack envelopes are protocol violations.
        """
        bad_envelopes: list[Any] = [
            None,
            [],
            {"ids": []},
            {"type": "data", "ids": []},
            {"type": "ack"},
            {"type": "ack", "ids": "a:1:2"},
            {"type": "ack", "ids": ["a:1"]},
            {"type": "ack", "ids": [7]},
            {"type": "ack", "ids": ["a:1:2"] * (MAX_ACK_IDS + 1)},
        ]
        for bad in bad_envelopes:
            with self.assertRaises(ProtocolViolation, msg=repr(bad)) as caught:
                parse_ack(bad)
            self.assertEqual(caught.exception.reason, "bad_ack")

    def test_envelope_id(self) -> None:
        """
        L{envelope_id} reads an envelope's id, or raises ProtocolViolation.
        """
        self.assertEqual(envelope_id({"id": "a:1:2"}), MessageId("a", 1, 2))
        for bad in [None, {}, {"id": 5}, {"id": "a:1:-2"}]:
            with self.assertRaises(ProtocolViolation) as caught:
                envelope_id(bad)
            self.assertEqual(caught.exception.reason, "bad_message_id")


class ReceiverTests(SynchronousTestCase):
    """
    L{ReliableReceiver}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.acks: Sent = []
        self.receiver = ReliableReceiver(
            self.clock, lambda to, env: self.acks.append((to, env)), DedupWindow(16)
        )

    def acked(self) -> list[tuple[str, list[str]]]:
        return [(to, env["ids"]) for to, env in self.acks]

    def test_interface(self) -> None:
        """
        It provides L{IReliableReceiver}.
        """
        self.assertTrue(verifyObject(IReliableReceiver, self.receiver))

    def test_default_window(self) -> None:
        """
        Without a window it makes a default L{DedupWindow}.
        """
        receiver = ReliableReceiver(self.clock, lambda to, env: None)
        self.assertIsInstance(receiver.window, DedupWindow)

    def test_validation(self) -> None:
        """
        Out-of-range batching settings are refused.
        """
        send = lambda to, env: None  # noqa: E731
        self.assertRaises(ValueError, ReliableReceiver, self.clock, send, ack_delay=-1)
        self.assertRaises(ValueError, ReliableReceiver, self.clock, send, max_ack_batch=0)
        self.assertRaises(
            ValueError, ReliableReceiver, self.clock, send, max_ack_batch=MAX_ACK_IDS + 1
        )

    def test_new_is_taken_and_acked(self) -> None:
        """
        A new envelope is taken and acknowledged to its transmitter.
        """
        self.assertTrue(self.receiver.receive("a", envelope(1, "a")))
        self.assertEqual(self.acked(), [("a", ["a:1:1"])])

    def test_duplicate_acked_again(self) -> None:
        """
        A duplicate is not taken, but acknowledged again (the first
        acknowledgement may have been lost).
        """
        self.receiver.receive("a", envelope(1, "a"))
        admitted: list[Any] = []

        def admit(env: dict[str, Any]) -> bool:
            admitted.append(env)
            return True

        self.assertFalse(self.receiver.receive("a", envelope(1, "a"), admit=admit))
        self.assertEqual(admitted, [])
        self.assertEqual(self.acked(), [("a", ["a:1:1"])] * 2)
        self.assertEqual(self.receiver.duplicates, 1)

    def test_ack_goes_to_transmitter(self) -> None:
        """
        The acknowledgement goes to the node that transmitted the envelope,
        which may not be the id's sender (a relay).
        """
        self.receiver.receive("relay", envelope(1, "a"))
        self.assertEqual(self.acked(), [("relay", ["a:1:1"])])

    def test_refused_by_admit(self) -> None:
        """
        An envelope the layer above could not take is neither recorded nor
        acknowledged, so its retransmission is offered again.
        """
        self.assertFalse(self.receiver.receive("a", envelope(1, "a"), admit=lambda e: False))
        self.assertEqual(self.acks, [])
        self.assertTrue(self.receiver.receive("a", envelope(1, "a"), admit=lambda e: True))
        self.assertEqual(self.acked(), [("a", ["a:1:1"])])

    def test_unreliable(self) -> None:
        """
        With C{acknowledge=False} duplicates are filtered but nothing is
        acknowledged.
        """
        self.assertTrue(self.receiver.receive("a", envelope(1, "a"), acknowledge=False))
        self.assertFalse(self.receiver.receive("a", envelope(1, "a"), acknowledge=False))
        self.assertEqual(self.acks, [])

    def test_malformed(self) -> None:
        """
        An envelope without a valid id is a protocol violation.
        """
        self.assertRaises(ProtocolViolation, self.receiver.receive, "a", {"body": 1})

    def test_batching(self) -> None:
        """
        With an ack delay, acknowledgements are batched per peer and sent
        when the delay passes.
        """
        receiver = ReliableReceiver(
            self.clock, lambda to, env: self.acks.append((to, env)), ack_delay=0.05
        )
        receiver.receive("a", envelope(1, "a"))
        receiver.receive("b", envelope(1, "b"))
        receiver.receive("a", envelope(2, "a"))
        self.assertEqual(self.acks, [])
        self.clock.advance(0.05)
        self.assertEqual(
            sorted(self.acked()), [("a", ["a:1:1", "a:1:2"]), ("b", ["b:1:1"])]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_batch_bound(self) -> None:
        """
        When C{max_ack_batch} ids wait, they are sent at once.
        """
        receiver = ReliableReceiver(
            self.clock,
            lambda to, env: self.acks.append((to, env)),
            ack_delay=10,
            max_ack_batch=3,
        )
        for n in range(3):
            receiver.receive("a", envelope(n, "a"))
        self.assertEqual(self.acked(), [("a", ["a:1:0", "a:1:1", "a:1:2"])])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_and_stop(self) -> None:
        """
        L{ReliableReceiver.flush} sends batched acks now;
        L{ReliableReceiver.stop} drops them and cancels the timer.
        """
        receiver = ReliableReceiver(
            self.clock, lambda to, env: self.acks.append((to, env)), ack_delay=1
        )
        receiver.receive("a", envelope(1, "a"))
        receiver.flush()
        self.assertEqual(self.acked(), [("a", ["a:1:1"])])
        receiver.receive("a", envelope(2, "a"))
        receiver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(len(self.acks), 1)

    def test_split_receive(self) -> None:
        """
        L{ReliableReceiver.check_duplicate} and
        L{ReliableReceiver.record_taken} do what L{ReliableReceiver.receive}
        does, in two steps, batching the acknowledgements without a timer:
        L{ReliableReceiver.flush_soon} schedules them, or a message of the
        caller takes them along (L{ReliableReceiver.take}).
        """
        receiver = ReliableReceiver(
            self.clock, lambda to, env: self.acks.append((to, env)), coalesce=True
        )
        first = MessageId("a", 1, 1)
        self.assertFalse(receiver.check_duplicate("a", first, "a:1:1"))
        receiver.record_taken("a", first, "a:1:1")
        self.assertTrue(receiver.check_duplicate("a", first, "a:1:1"))
        self.assertEqual(receiver.duplicates, 1)
        self.assertEqual(receiver.batched, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(receiver.take("a"), ["a:1:1", "a:1:1"])
        self.assertEqual(receiver.batched, 0)
        receiver.record_taken("b", MessageId("b", 1, 1), "b:1:1")
        receiver.flush_soon()
        receiver.flush_soon()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.acked(), [("b", ["b:1:1"])])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_accept(self) -> None:
        """
        L{ReliableReceiver.accept} is L{ReliableReceiver.receive} for an id
        parsed already.
        """
        msg_id = MessageId("a", 1, 1)
        self.assertTrue(self.receiver.accept("a", msg_id, "a:1:1", {}))
        self.assertFalse(self.receiver.accept("a", msg_id, "a:1:1", {}))
        self.assertEqual(self.acked(), [("a", ["a:1:1"])] * 2)

    def test_send_failure(self) -> None:
        """
        An acknowledgement that cannot be sent is dropped (the sender will
        retransmit and be acknowledged again).
        """

        def send(to: str, env: dict[str, Any]) -> None:
            raise QueueFull("full")

        receiver = ReliableReceiver(self.clock, send)
        self.assertTrue(receiver.receive("a", envelope(1, "a")))
