"""Errors a handler may raise to steer delivery, and the error for misusing the router.

Any other exception a handler raises is retried with backoff by the worker; these two say
explicitly that retrying is pointless (`Reject`) or should happen on the handler's schedule
(`RetryLater`).
"""

import math

__all__ = ["RegistrationError", "Reject", "RetryLater"]


class RegistrationError(ValueError):
    """A handler was registered wrongly; raised at import time, not when an event arrives."""


class Reject(Exception):
    """The event can never be handled: dead-letter it now, without retrying.

    Use it for events that are wrong rather than unlucky, such as a completed session whose
    order does not exist. `reason` is kept with the dead letter.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(Exception):
    """Try this handler again after `after` seconds, e.g. when a dependency says so.

    The retry still counts against the handler's `max_attempts`.
    """

    def __init__(self, after: float, reason: str = "") -> None:
        if not (after >= 0 and math.isfinite(after)):
            raise ValueError(f"RetryLater(after=...) must be a finite number >= 0, got {after!r}")
        super().__init__(after, reason)
        self.after = after
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"retry after {self.after:g}s{suffix}"
