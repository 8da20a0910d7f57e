"""Every Redis key and id format that loops-webhooks reads or writes is built here, and nowhere
else. Lua scripts receive keys as KEYS and prefixes as ARGV from this module, or, for
``begin`` and ``finish``, in the constants their source opens with (``Admission.settings``);
they never spell one out.

arq's own keys (job payloads, in-progress markers, retry counters) come from
``arq.constants``, so that the receiver can enqueue a job in the same atomic step that
records the event.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

__all__ = [
    "ARQ_EVENT_JOBS_IN_PROGRESS",
    "ARQ_IN_PROGRESS_PREFIX",
    "ARQ_JOB_PREFIX",
    "DEAD_LETTER_INDEX",
    "DEAD_LETTER_PREFIX",
    "DEAD_LETTER_REASON_COUNTS",
    "EVENT_DEAD_LETTERS_PREFIX",
    "EVENT_INDEX",
    "EVENT_PREFIX",
    "HANDLER_FIELD_PREFIX",
    "HANDLER_HISTORY_FIELD_PREFIX",
    "HANDLER_SLOTS_PREFIX",
    "HANDLER_STARTS_PREFIX",
    "HANDLER_WAITING_PREFIX",
    "JOB_ID_PREFIX",
    "LIVE_HANDLERS",
    "OUTCOME_COUNTS_TTL_SECONDS",
    "PAUSED_HANDLERS",
    "PENDING_EVENTS",
    "REPLICATION_MARK",
    "SEARCH_PREFIX",
    "SEARCH_TERMS",
    "SESSION_EVENTS_PREFIX",
    "SESSION_WAITING_PREFIX",
    "TRACE_CONTEXT_FIELD",
    "TRIM_LOCK",
    "arq_in_progress_key",
    "arq_job_key",
    "arq_retry_key",
    "customer_term",
    "dashboard_revoked_session_key",
    "dashboard_wrong_tokens_key",
    "dead_letter_id",
    "dead_letter_key",
    "event_dead_letters_key",
    "event_key",
    "handler_slots_key",
    "handler_waiting_key",
    "job_id_for_event",
    "metadata_term",
    "outcome_counts_key",
    "search_key",
    "session_events_key",
    "session_term",
    "term_parts",
    "unparseable_dead_letter_id",
]

PREFIX = "loops:"

PENDING_EVENTS = PREFIX + "pending"
"""Sorted set of event ids accepted but not finished, scored by receipt time (ms)."""

EVENT_INDEX = PREFIX + "events"
"""Sorted set of every stored event id, scored by receipt time (ms), for listing events.
The reconciler removes an id once its record is gone or due to expire (see ``TRIM_LOCK``);
readers skip ids whose record is gone."""

SEARCH_PREFIX = PREFIX + "find:"
"""A search index is this prefix and a search term (built below, from the values that
``search.py`` takes from an event): a
sorted set of the ids of the events that hold the term, scored by receipt time (ms)."""

SEARCH_TERMS = PREFIX + "search-terms"
"""Hash of each indexed event's search terms (by event id), each written ``<length>:<bytes>``:
the scripts that trim or erase an event find its entries in the search indexes here, even
after its record expired. Kept and removed with the event's index entry."""

TRIM_LOCK = PREFIX + "trim-lock"
"""Held by the worker whose reconciler trims the indexes in this interval, so that several
workers do not repeat the same pass."""

DEAD_LETTER_INDEX = PREFIX + "dlq"
"""Sorted set of dead-letter ids, scored by the time they were dead-lettered (ms)."""

DEAD_LETTER_REASON_COUNTS = PREFIX + "dlq-reasons"
"""Hash of how many dead letters are stored per reason, kept by the scripts that add and
remove letters, so the figures never read every letter."""

EVENT_PREFIX = PREFIX + "event:"
DEAD_LETTER_PREFIX = PREFIX + "dlq:"
EVENT_DEAD_LETTERS_PREFIX = PREFIX + "event-dlq:"


def search_key(term: str) -> str:
    """The sorted set of the ids of the events holding ``term``, by receipt time (ms)."""
    return SEARCH_PREFIX + term


def session_term(session_id: str) -> str:
    return "session:" + session_id


def customer_term(customer_id: str) -> str:
    return "customer:" + customer_id


def metadata_term(name: str, value: str) -> str:
    """A searchable metadata key and its value; names hold no ``=`` (settings check it)."""
    return f"metadata:{name}={value}"


def term_parts(term: str) -> tuple[str, str, str]:
    """(kind, metadata name or '', value) of a term built above."""
    kind, _, rest = term.partition(":")
    if kind == "metadata":
        name, _, value = rest.partition("=")
        return kind, name, value
    return kind, "", rest


HANDLER_FIELD_PREFIX = "handler:"
"""In an event's hash, ``handler:<name>`` holds that handler's state as JSON."""

HANDLER_HISTORY_FIELD_PREFIX = "history:"
"""In an event's hash, ``history:<name>`` holds a JSON array of that handler's states that
replays replaced (oldest first), so an event's attempts before a replay stay visible."""

TRACE_CONTEXT_FIELD = "traceparent"
"""In an event's hash, the W3C ``traceparent`` of the receiver's span for the request that
delivered it (only with traces on): the worker's attempt spans join that trace."""

PAUSED_HANDLERS = PREFIX + "paused-handlers"
"""Hash of the paused handlers: name to JSON ``{since_ms, reason, by}``. Written only by
``workers/admission.py``; read by the admission step in every ``begin``."""

LIVE_HANDLERS = PREFIX + "live-handlers"
"""Hash of the handlers running workers have registered: name to JSON ``{seen_until_ms,
concurrency, rate}``, rewritten by each worker every few seconds."""

HANDLER_SLOTS_PREFIX = PREFIX + "slots:"
"""``slots:<handler>``: sorted set of the jobs running a concurrency-limited handler now,
scored by when the slot lapses unless its worker renews it (ms)."""

HANDLER_STARTS_PREFIX = PREFIX + "starts:"
"""``starts:<handler>``: sorted set of a rate-limited handler's starts in its window (ms)."""

HANDLER_WAITING_PREFIX = PREFIX + "waiting:"
"""``waiting:<handler>``: sorted set of the event ids whose run of the handler admission
held back (paused or over a limit), scored by receipt time (ms): oldest first."""


SESSION_EVENTS_PREFIX = PREFIX + "session:"
"""``session:<checkout session id>``: sorted set of the ids of the session's events, scored by
their ``created`` (ms; the receipt time where it is unreadable), written at intake: the order
in which admission lets a session's events start a handler."""

SESSION_WAITING_PREFIX = PREFIX + "session-waiting:"
"""``session-waiting:<checkout session id>``: sorted set of the runs admission held back to
keep the session's order, each ``<handler>\n<event id>``, scored by the event's ``created``;
the earliest per handler goes back to the queue when a run of the session ends."""


def session_events_key(session_id: str) -> str:
    return SESSION_EVENTS_PREFIX + session_id


def handler_slots_key(handler: str) -> str:
    return HANDLER_SLOTS_PREFIX + handler


def handler_waiting_key(handler: str) -> str:
    return HANDLER_WAITING_PREFIX + handler


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
    return EVENT_PREFIX + event_id


def event_dead_letters_key(event_id: str) -> str:
    """Set of the ids of one event's dead letters: while it is not empty, the event record
    is kept, since a replay needs it to skip the handlers that succeeded."""
    return EVENT_DEAD_LETTERS_PREFIX + event_id


def dead_letter_key(letter_id: str) -> str:
    """Hash holding one dead letter, kept until replayed or purged (by an operator, or by
    the reconciler past ``LOOPS_DEAD_LETTER_RETENTION_DAYS``)."""
    return DEAD_LETTER_PREFIX + letter_id


def dead_letter_id(event_id: str, handler: str) -> str:
    """``<event id>:<handler>``, stable per (event, handler): dead-lettering the pair again
    replaces the earlier letter. ``%`` and ``:`` in the event id are percent-escaped, so the
    first ``:`` always ends the event id (handler names contain colons: ``module:function``).
    A letter of an event no handler matched has an empty handler part."""
    return event_id.replace("%", "%25").replace(":", "%3A") + ":" + handler


def unparseable_dead_letter_id(body_sha256: str) -> str:
    """A signed body that is not a usable event has no event id: its letter's id is ``:``
    and the body's hash, an empty event part that no event's letter can have."""
    return ":" + body_sha256


def dashboard_wrong_tokens_key(client: str) -> str:
    """Counter of the wrong dashboard tokens one client address sent in its current window;
    it expires when the window ends."""
    return f"{PREFIX}dashboard:wrong-tokens:{client}"


def dashboard_revoked_session_key(session: str) -> str:
    """Present while a logged-out dashboard session (its cookie's nonce) would otherwise
    still be valid; it expires when the session would have."""
    return f"{PREFIX}dashboard:revoked-session:{session}"


JOB_ID_PREFIX = "event:"
"""An event's arq job id is this prefix and the event id."""


def job_id_for_event(event_id: str) -> str:
    """One arq job id per event, so an event is never processed by two jobs at once."""
    return JOB_ID_PREFIX + event_id


def arq_job_key(job_id: str) -> str:
    return job_key_prefix + job_id


ARQ_IN_PROGRESS_PREFIX = in_progress_key_prefix
"""arq marks a job taken by a worker with this prefix and the job id."""

ARQ_JOB_PREFIX = job_key_prefix
"""arq keeps a job's payload under this prefix and the job id."""

ARQ_EVENT_JOBS_IN_PROGRESS = in_progress_key_prefix + job_id_for_event("*")
"""Pattern matching the in-progress markers of event jobs, for counting running ones."""


def arq_in_progress_key(job_id: str) -> str:
    return in_progress_key_prefix + job_id


def arq_retry_key(job_id: str) -> str:
    """arq's count of a job's runs; ours are per handler, in the event record."""
    return retry_key_prefix + job_id
