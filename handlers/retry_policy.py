"""When to try a failed handler again: exponential backoff with full jitter, capped.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries of
many events that failed together, so a recovering dependency is not hit by a thundering herd.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_delay_seconds: float

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(attempt - 1, 64)
        return float(min(self.max_delay_seconds, self.base_seconds * 2**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A wait drawn uniformly from ``[0, ceiling(attempt)]``."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))

    def allows_another(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts
