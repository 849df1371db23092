"""
Tests for L{clustron.backoff.Backoff} with full jitter (the default: peer
redials, message retransmissions), and for its argument checks. Equal jitter
is covered by C{tests.test_discovery_backoff}.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from clustron.backoff import Backoff

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


class BackoffTests(SynchronousTestCase):
    """
    Capped exponential backoff with full jitter.
    """

    def test_ceiling_doubles_then_caps(self) -> None:
        """
        The upper bound of the n-th delay is C{initial * 2**n}, capped at
        C{maximum}.
        """
        backoff = Backoff(0.1, 1.0, random.Random(1))
        ceilings = []
        for _ in range(7):
            ceilings.append(backoff.ceiling())
            backoff.next_delay()
        self.assertEqual(ceilings, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        self.assertEqual(backoff.attempts, 7)

    def test_reset(self) -> None:
        """
        After L{Backoff.reset} the bound starts again from C{initial}.
        """
        backoff = Backoff(0.1, 10.0, random.Random(1))
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual(backoff.attempts, 0)
        self.assertEqual(backoff.ceiling(), 0.1)

    def test_jitter_spreads(self) -> None:
        """
        Delays are spread over the whole range, not stuck at its ends: many
        nodes retrying after one event do not retry in step.
        """
        rng = random.Random(5)
        delays = []
        for _ in range(1000):
            backoff = Backoff(1.0, 1.0, rng)
            delays.append(backoff.next_delay())
        self.assertTrue(all(0.1 <= d <= 1.0 for d in delays))
        self.assertGreater(len({round(d, 3) for d in delays}), 500)
        low = sum(1 for d in delays if d < 0.5)
        self.assertTrue(350 < low < 650, low)

    def test_deterministic(self) -> None:
        """
        The same seed gives the same delays.
        """

        def delays(seed: int) -> list[float]:
            backoff = Backoff(0.05, 2.0, random.Random(seed))
            return [backoff.next_delay() for _ in range(20)]

        self.assertEqual(delays(3), delays(3))
        self.assertNotEqual(delays(3), delays(4))

    def test_many_attempts(self) -> None:
        """
        The bound stays finite after any number of failures.
        """
        backoff = Backoff(0.05, 2.0, random.Random(1))
        for _ in range(10_000):
            self.assertLessEqual(backoff.next_delay(), 2.0)
        self.assertEqual(backoff.ceiling(), 2.0)

    def test_invalid(self) -> None:
        """
        The bounds must be finite numbers with C{0 < initial <= maximum}, the
        factor a finite number of at least 1, the jitter a known kind; each
        error names the bad argument.
        """
        nan, inf = float("nan"), float("inf")
        for kwargs, word in (
            ({"initial": 0, "maximum": 1}, "initial"),
            ({"initial": -1, "maximum": 1}, "initial"),
            ({"initial": nan, "maximum": 1}, "initial"),
            ({"initial": 2, "maximum": 1}, "maximum"),
            ({"initial": 0.1, "maximum": nan}, "maximum"),
            ({"initial": 0.1, "maximum": inf}, "maximum"),
            ({"initial": inf, "maximum": inf}, "maximum"),
            ({"initial": 0.1, "maximum": 1, "factor": 0.5}, "factor"),
            ({"initial": 0.1, "maximum": 1, "factor": nan}, "factor"),
            ({"initial": 0.1, "maximum": 1, "factor": inf}, "factor"),
            ({"initial": 0.1, "maximum": 1, "jitter": "none"}, "jitter"),
        ):
            with self.assertRaises(ValueError) as caught:
                Backoff(rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
            self.assertIn(word, str(caught.exception), kwargs)

    def test_large_factor_never_overflows(self) -> None:
        """
        With a large factor, C{factor ** attempts} leaves the float range
        long before 1000 failures; the ceiling stays at C{maximum}.
        """
        for factor in (2.1, 3.0, 10.0, 1e6):
            backoff = Backoff(0.1, 30.0, random.Random(1), factor=factor)
            for _ in range(1200):
                self.assertLessEqual(backoff.next_delay(), 30.0)
            self.assertEqual(backoff.ceiling(), 30.0)

    def test_factor(self) -> None:
        """
        The ceiling grows by C{factor} per failure.
        """
        backoff = Backoff(1.0, 100.0, random.Random(1), factor=3.0)
        ceilings = []
        for _ in range(6):
            ceilings.append(backoff.ceiling())
            backoff.next_delay()
        self.assertEqual(ceilings, [1.0, 3.0, 9.0, 27.0, 81.0, 100.0])

    def test_default_random(self) -> None:
        """
        Without a random source one is made (delays stay in bounds).
        """
        backoff = Backoff(0.1, 1.0)
        self.assertTrue(0.01 <= backoff.next_delay() <= 0.1)

    @PROPERTY
    @given(
        initial=st.floats(0.001, 10),
        factor=st.floats(1, 100),
        failures=st.integers(0, 80),
        seed=st.integers(0, 2**32),
    )
    def test_bounds(self, initial: float, factor: float, failures: int, seed: int) -> None:
        """
        Every delay lies between a tenth of C{initial} (never a busy loop)
        and the current ceiling, which never exceeds C{maximum}.
        """
        maximum = initial * factor
        backoff = Backoff(initial, maximum, random.Random(seed))
        for n in range(failures):
            ceiling = backoff.ceiling()
            self.assertLessEqual(ceiling, maximum)
            self.assertEqual(ceiling, min(maximum, initial * 2**n))
            delay = backoff.next_delay()
            self.assertGreaterEqual(delay, initial / 10)
            self.assertLessEqual(delay, max(ceiling, initial / 10))
