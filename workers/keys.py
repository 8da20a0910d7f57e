"""Every Redis key that loops-webhooks reads or writes is named here, and nowhere else.

arq's own keys (job payloads, in-progress markers) come from ``arq.constants`` so that the
receiver can enqueue a job in the same atomic step that records the event.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

__all__ = [
    "ARQ_IN_PROGRESS_PREFIX",
    "DEAD_LETTER_INDEX",
    "OUTCOME_COUNTS_TTL_SECONDS",
    "PENDING_EVENTS",
    "REPLICATION_MARK",
    "arq_in_progress_key",
    "arq_job_key",
    "arq_retry_key",
    "dead_letter_key",
    "event_key",
    "job_id_for_event",
    "outcome_counts_key",
]

PREFIX = "loops:"

PENDING_EVENTS = PREFIX + "pending"
"""Sorted set of event ids accepted but not finished, scored by receipt time (ms)."""

DEAD_LETTER_INDEX = PREFIX + "dlq"
"""Sorted set of dead-letter ids, scored by the time they were dead-lettered (ms)."""

REPLICATION_MARK = PREFIX + "replication-mark"
"""Written in every confirmed intake round trip, just before ``WAIT``: a batch of duplicates
writes nothing else, and ``WAIT`` only covers what its own connection has written."""


OUTCOME_COUNTS_TTL_SECONDS = 2 * 60 * 60
"""Per-minute outcome counters live two hours: ``stats`` reads the last sixty minutes."""


def outcome_counts_key(now_ms: int) -> str:
    """Hash of handler outcome counts (done, retry, dead) for the minute holding ``now_ms``."""
    return f"{PREFIX}outcomes:{now_ms // 60_000}"


def event_key(event_id: str) -> str:
    """Hash holding one event: its raw bytes, receipt time, headers, status, handler states."""
    return f"{PREFIX}event:{event_id}"


def dead_letter_key(dead_letter_id: str) -> str:
    """Hash holding one dead letter; it never expires."""
    return f"{PREFIX}dlq:{dead_letter_id}"


def job_id_for_event(event_id: str) -> str:
    """One arq job id per event, so an event is never processed by two jobs at once."""
    return f"event:{event_id}"


def arq_job_key(job_id: str) -> str:
    return job_key_prefix + job_id


ARQ_IN_PROGRESS_PREFIX = in_progress_key_prefix
"""arq marks a job taken by a worker with this prefix and the job id."""


def arq_in_progress_key(job_id: str) -> str:
    return in_progress_key_prefix + job_id


def arq_retry_key(job_id: str) -> str:
    """arq's count of a job's runs; ours are per handler, in the event record."""
    return retry_key_prefix + job_id
