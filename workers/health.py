"""Whether this worker can use Redis now, as its own Redis calls found: the readiness signal.

Every Redis failure a worker meets (polling, claiming, recording, the periodic health-key
write) is reported here; the worker backs off while it lasts and ``/healthz`` answers 503, so
a platform sees a worker that is alive but cannot work. The first success after failures
clears it. One line is logged when Redis becomes unusable and one when it is usable again,
not one per failed call.
"""

from __future__ import annotations

import time

import structlog

__all__ = ["RedisHealth"]

log = structlog.get_logger(logger_name="loops_webhooks.workers")

BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


class RedisHealth:
    """The worker's view of Redis; used from its event loop only."""

    def __init__(self) -> None:
        self._failures = 0
        self._failing_since = 0.0
        self._problem = ""

    @property
    def problem(self) -> str | None:
        """Why Redis is unusable (the last error), or None while it works."""
        return self._problem if self._failures else None

    def failed(self, error: BaseException) -> None:
        self._problem = f"{type(error).__name__}: {error}"
        if not self._failures:
            self._failing_since = time.monotonic()
            log.warning("Redis is unusable; backing off until it answers", error=self._problem)
        self._failures += 1

    def succeeded(self) -> None:
        if self._failures:
            seconds = round(time.monotonic() - self._failing_since, 3)
            log.info("Redis is usable again; carrying on", unusable_for_s=seconds)
        self._failures = 0

    def backoff_seconds(self) -> float:
        """How long to wait before the next try: 0 while healthy, then doubling, capped."""
        if not self._failures:
            return 0.0
        doubled = BACKOFF_FIRST_SECONDS * 2 ** min(self._failures - 1, 16)
        return float(min(BACKOFF_MAX_SECONDS, doubled))
