"""
Capped exponential backoff with full jitter.
"""

from __future__ import annotations

import random


class Backoff:
    """
    Delays for retrying something that failed: the n-th delay is drawn
    uniformly from C{[0, min(maximum, initial * 2**n)]} ("full jitter"), so
    many nodes retrying after one event spread out instead of hammering in
    step.

    @ivar attempts: failures since the last L{reset}.
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"need 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.attempts = 0

    def ceiling(self) -> float:
        """
        @return: the upper bound of the next delay.
        """
        return min(self.maximum, self.initial * (2 ** min(self.attempts, 62)))

    def next_delay(self) -> float:
        """
        @return: the delay before the next attempt; counts one more failure.
        """
        ceiling = self.ceiling()
        self.attempts += 1
        # Never zero: a floor of a tenth of the initial delay keeps a retry
        # loop from spinning.
        return max(self.initial / 10, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        """
        Forget past failures (after a success).
        """
        self.attempts = 0
