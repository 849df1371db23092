"""
A capped exponential backoff schedule with jitter.

Used by discovery sources (and free for any other retry loop) to space out
attempts after failures: the delay doubles after each failure up to a cap,
and each delay is drawn at random from the upper half of its range so that
many nodes failing together do not retry in lock-step.
"""

from __future__ import annotations

import random
from typing import Protocol


class RandomSource(Protocol):
    """
    What L{Backoff} needs from a random number generator (for example a
    L{random.Random} seeded by a test).
    """

    def random(self) -> float:
        """
        @return: a float in C{[0.0, 1.0)}.
        """


class Backoff:
    """
    Capped exponential backoff with "equal jitter".

    The n-th consecutive call to L{next_delay} (counting from 0) returns a
    delay in C{[base / 2, base]} where C{base = min(maximum, initial *
    factor ** n)}. L{reset} starts over after a success.

    @ivar initial: the base delay of the first retry, in seconds.
    @ivar maximum: the cap on the base delay, in seconds.
    @ivar factor: how much the base delay grows per failure.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: RandomSource | None = None,
        factor: float = 2.0,
    ) -> None:
        """
        @param initial: the base delay of the first retry; greater than 0.
        @param maximum: the cap on the base delay; at least C{initial}.
        @param rng: where the jitter comes from; a fresh L{random.Random}
            when not given.
        @param factor: the growth per failure; at least 1.
        @raise ValueError: when the numbers break those rules.
        """
        if not initial > 0:
            raise ValueError(f"initial delay must be greater than 0, got {initial!r}")
        if not maximum >= initial:
            raise ValueError(
                f"maximum delay must be at least the initial delay {initial!r}, got {maximum!r}"
            )
        if not factor >= 1:
            raise ValueError(f"factor must be at least 1, got {factor!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._base = self.initial
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """
        The number of delays handed out since the last L{reset}.
        """
        return self._attempts

    def next_delay(self) -> float:
        """
        The delay before the next attempt; each call counts one more failure.

        @return: seconds, between half the current base and the base.
        """
        base = self._base
        self._attempts += 1
        self._base = min(self.maximum, self._base * self.factor)
        return base / 2 + self._rng.random() * base / 2

    def reset(self) -> None:
        """
        Start over from the initial delay (after a success).
        """
        self._base = self.initial
        self._attempts = 0
