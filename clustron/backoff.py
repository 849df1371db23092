"""
Capped exponential backoff with jitter, for every retry loop in Clustron
(redialling peers, retransmitting messages, retrying discovery).
"""

from __future__ import annotations

import math
import random
from typing import Protocol


class RandomSource(Protocol):
    """
    What L{Backoff} needs from a random number generator (a
    L{random.Random}, seeded in tests and in the simulator).
    """

    def random(self) -> float:
        """
        @return: a float in C{[0.0, 1.0)}.
        """


class Backoff:
    """
    Delays for retrying something that failed.

    The base delay of the n-th consecutive failure (from 0) is
    C{min(maximum, initial * factor ** n)}; the delay handed out is drawn
    from it with jitter, so that many nodes retrying after one event spread
    out instead of hammering in step:

      - C{"full"} (the default): uniform in C{[0, base]}, never below a
        tenth of C{initial} so a retry loop cannot spin;
      - C{"equal"}: uniform in C{[base / 2, base]}, for loops where a
        retry must not come much sooner than the base (discovery).

    @ivar attempts: failures since the last L{reset}.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: RandomSource | None = None,
        factor: float = 2.0,
        jitter: str = "full",
    ) -> None:
        """
        @raise ValueError: unless C{0 < initial <= maximum} (finite),
            C{factor >= 1} (finite) and C{jitter} is C{"full"} or C{"equal"}.
        """
        if not initial > 0:
            raise ValueError(f"initial delay must be greater than 0, got {initial!r}")
        if not (maximum >= initial and math.isfinite(maximum)):
            raise ValueError(
                "maximum delay must be a finite number at least the initial delay "
                f"{initial!r}, got {maximum!r}"
            )
        if not (factor >= 1 and math.isfinite(factor)):
            raise ValueError(f"factor must be a finite number at least 1, got {factor!r}")
        if jitter not in ("full", "equal"):
            raise ValueError(f"jitter must be 'full' or 'equal', got {jitter!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self.jitter = jitter
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self.attempts = 0

    def ceiling(self) -> float:
        """
        @return: the base (upper bound) of the next delay.
        """
        if self.attempts > 1000:
            return self.maximum
        try:
            return min(self.maximum, self.initial * self.factor**self.attempts)
        except OverflowError:  # factor ** attempts beyond a float: long capped
            return self.maximum

    def next_delay(self) -> float:
        """
        @return: the delay before the next attempt, in seconds; counts one
            more failure.
        """
        base = self.ceiling()
        self.attempts += 1
        if self.jitter == "equal":
            return base / 2 + self._rng.random() * base / 2
        return max(self.initial / 10, self._rng.random() * base)

    def reset(self) -> None:
        """
        Forget past failures (after a success).
        """
        self.attempts = 0
