"""
Tests for L{clustron.testkit.simnet.SimClock}: the heap clock runs calls in
exactly the order Twisted's L{Clock} does.
"""

from __future__ import annotations

import random

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.testkit.simnet import SimClock


def _play(clock: Clock, seed: int, move: bool = True) -> list[tuple[float, int]]:
    """
    Drive a clock with a random program of calls, cancellations and (when
    C{move}) resets and delays, some made by running calls; return what
    ran, when.
    """
    rng = random.Random(seed)
    ran: list[tuple[float, int]] = []
    calls = []

    def fire(label: int) -> None:
        ran.append((clock.seconds(), label))
        if label % 3 == 0 and label < 5000:
            calls.append(clock.callLater((label % 4) / 2, fire, label + 1000))

    for label in range(60):
        calls.append(
            clock.callLater(rng.choice([0, 0.5, 1, 1.5, 2, rng.uniform(0, 3)]), fire, label)
        )
    for _ in range(30):
        call = rng.choice(calls)
        if not call.active():
            continue
        what = rng.random()
        if what < 0.3 or not move:
            call.cancel()
        elif what < 0.6:
            call.reset(rng.choice([0, 0.5, 1, rng.uniform(0, 3)]))
        else:
            call.delay(rng.choice([-0.5, 0.5, 1, -2]))
    for _ in range(12):
        clock.advance(rng.choice([0, 0.25, 0.5, 1]))
    clock.advance(100)
    return ran


class SimClockTests(SynchronousTestCase):
    """
    L{SimClock} is a drop-in for L{Clock}.
    """

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IReactorTime, SimClock()))

    def test_same_order_as_twisted_clock(self) -> None:
        """
        Random programs of calls and cancellations run in the same order at
        the same times on both clocks.
        """
        for seed in range(40):
            self.assertEqual(
                _play(SimClock(), seed, move=False),
                _play(Clock(), seed, move=False),
                f"seed {seed}",
            )

    def test_moved_calls_run_on_time(self) -> None:
        """
        With resets and delays too, both clocks run the same calls at the
        same times, and the heap clock's run is the same every time.
        """
        for seed in range(40):
            ours = _play(SimClock(), seed)
            self.assertEqual(ours, _play(SimClock(), seed))
            self.assertEqual(sorted(ours), sorted(_play(Clock(), seed)), f"seed {seed}")
            self.assertEqual([t for t, _ in ours], sorted(t for t, _ in ours))

    def test_ties_run_in_scheduling_order(self) -> None:
        clock = SimClock()
        ran: list[str] = []
        clock.callLater(1, ran.append, "a")
        b = clock.callLater(2, ran.append, "b")
        clock.callLater(1, ran.append, "c")
        b.reset(1)
        clock.advance(1)
        self.assertEqual(ran, ["a", "b", "c"])

    def test_get_delayed_calls_and_next_call_time(self) -> None:
        clock = SimClock()
        self.assertIsNone(clock.next_call_time())
        late = clock.callLater(5, lambda: None)
        early = clock.callLater(1, lambda: None)
        gone = clock.callLater(0.5, lambda: None)
        gone.cancel()
        self.assertEqual(clock.getDelayedCalls(), [early, late])
        self.assertEqual(clock.calls, [early, late])
        self.assertEqual(clock.next_call_time(), 1)
        early.delay(10)
        self.assertEqual(clock.next_call_time(), 5)
        clock.advance(5)
        self.assertFalse(late.active())
        self.assertEqual(clock.getDelayedCalls(), [early])

    def test_cancel_and_called_errors(self) -> None:
        clock = SimClock()
        call = clock.callLater(1, lambda: None)
        clock.advance(1)
        self.assertTrue(call.called)
        self.assertRaises(error.AlreadyCalled, call.cancel)
        other = clock.callLater(1, lambda: None)
        other.cancel()
        self.assertRaises(error.AlreadyCancelled, other.cancel)

    def test_many_cancellations_stay_bounded(self) -> None:
        """
        Cancelled calls do not pile up in the heap.
        """
        clock = SimClock()
        keep = clock.callLater(10, lambda: None)
        for _ in range(10_000):
            clock.callLater(1, lambda: None).cancel()
        self.assertLess(len(clock._heap), 100)
        self.assertEqual(clock.getDelayedCalls(), [keep])
