"""
Tests for L{clustron.backoff} with equal jitter (the discovery retry schedule).
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from clustron.backoff import Backoff


class FixedRandom:
    """
    A random source that always answers the same number.
    """

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class BackoffTests(SynchronousTestCase):
    """
    Tests for L{Backoff}.
    """

    def test_doubles_up_to_the_cap(self) -> None:
        """
        With the largest jitter the delays are the base delays: they double
        from C{initial} and stop at C{maximum}.
        """
        backoff = Backoff(0.5, 3.0, FixedRandom(0.999999), jitter="equal")
        delays = [round(backoff.next_delay(), 3) for _ in range(6)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 3.0, 3.0, 3.0])
        self.assertEqual(backoff.attempts, 6)

    def test_jitter_stays_in_upper_half(self) -> None:
        """
        Every delay lies between half the base delay and the base delay.
        """
        backoff = Backoff(1.0, 8.0, random.Random(7), jitter="equal")
        bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
        delays = [backoff.next_delay() for _ in bases]
        for base, delay in zip(bases, delays, strict=True):
            self.assertTrue(base / 2 <= delay <= base, (base, delay))
        self.assertGreater(len(set(delays)), 1)

    def test_smallest_jitter(self) -> None:
        """
        With the smallest jitter every delay is half its base delay.
        """
        backoff = Backoff(2.0, 4.0, FixedRandom(0.0), jitter="equal")
        self.assertEqual([backoff.next_delay() for _ in range(3)], [1.0, 2.0, 2.0])

    def test_reset(self) -> None:
        """
        L{Backoff.reset} starts over from the initial delay.
        """
        backoff = Backoff(1.0, 100.0, FixedRandom(0.999999), jitter="equal")
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual(backoff.attempts, 0)
        self.assertAlmostEqual(backoff.next_delay(), 1.0, places=4)

    def test_many_failures_do_not_overflow(self) -> None:
        """
        Thousands of failures in a row keep giving the capped delay.
        """
        backoff = Backoff(0.1, 5.0, FixedRandom(0.999999), jitter="equal")
        for _ in range(5000):
            delay = backoff.next_delay()
        self.assertAlmostEqual(delay, 5.0, places=4)

    def test_same_seed_same_delays(self) -> None:
        """
        The jitter comes only from the given random source.
        """
        first = Backoff(0.2, 10.0, random.Random(3), jitter="equal")
        second = Backoff(0.2, 10.0, random.Random(3), jitter="equal")
        self.assertEqual(
            [first.next_delay() for _ in range(10)], [second.next_delay() for _ in range(10)]
        )

    def test_bad_arguments(self) -> None:
        """
        Non-positive initial delays, caps below the initial delay and
        shrinking factors are refused with a reason.
        """
        self.assertIn("greater than 0", str(self.assertRaises(ValueError, Backoff, 0, 1)))
        self.assertIn("at least the initial", str(self.assertRaises(ValueError, Backoff, 2, 1)))
        self.assertIn(
            "factor", str(self.assertRaises(ValueError, Backoff, 1, 2, None, 0.5))
        )
