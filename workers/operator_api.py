"""What an operator does, as a Python API: show and list events; list, show, replay and purge
dead letters; the queue's figures.

The CLI, the dashboard and users' own scripts call these functions. They take typed
arguments, return typed data and never print. Lists are pages over the sorted sets, newest
first, with an opaque cursor for the next page, so 10,000 events or letters are never loaded
at once; filters that no index covers are applied while paging, within a bounded scan.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Generic, TypeVar

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from loops_webhooks.workers import keys
from loops_webhooks.workers.admission import (
    HandlerFlow,
    HandlerPause,
    LiveHandler,
    Resumed,
    handler_flows,
    live_handlers,
    pause_handler,
    paused_names,
    resume_handler,
)
from loops_webhooks.workers.dead_letters import DeadLetter, get_dead_letter
from loops_webhooks.workers.event_store import (
    EventStatus,
    EventStore,
    HandlerState,
    HandlerStatus,
    StoredEvent,
)
from loops_webhooks.workers.replay import (
    ReplayResult,
    purge_dead_letter,
    replay_dead_letter,
    replay_refused,
)
from loops_webhooks.workers.scripts import register_script
from loops_webhooks.workers.search import (
    BusinessKeys,
    SearchTerms,
    UnsearchableKey,
    pack_terms,
    search_terms,
    unpack_terms,
)
from loops_webhooks.workers.stats import Stats, collect_stats

__all__ = [
    "DeadLetterFilter",
    "ErasureReport",
    "EventFilter",
    "EventSummary",
    "HandlerOverview",
    "InvalidCursor",
    "NotFound",
    "OperatorApi",
    "Page",
    "ReindexReport",
    "ReplayReport",
    "UnsearchableKey",
    "parse_since",
]

T = TypeVar("T")

MAX_PAGE_SIZE = 500
REINDEX_BATCH = 500
ERASE_PENDING = -1
SCAN_LIMIT = 5_000
"""Index entries one list call looks at before it returns a short page and a cursor, so a
filter that matches little never makes one call read everything."""

_LETTER_SUMMARY_FIELDS = [f.name for f in fields(DeadLetter) if f.name not in ("raw", "traceback")]
_EVENT_SUMMARY_FIELDS = [
    "id",
    "type",
    "status",
    "received_at",
    "finished_at",
    "outcome",
    "erased_at",
]


_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> int:
    """A ``since`` filter as people write it: an ISO 8601 time (UTC unless it says
    otherwise) or a duration ago (``90s``, ``15m``, ``2h``, ``7d``); milliseconds since the
    epoch. Raises ValueError saying which forms are accepted."""
    relative = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if relative:
        return int((time.time() - int(relative[1]) * _SECONDS_PER_UNIT[relative[2]]) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2025-01-15T10:30:00Z) or a duration ago "
            "(90s, 15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class NotFound(LookupError):
    """An event or dead letter named by id is not stored (never was, expired, or purged)."""


class InvalidCursor(ValueError):
    """A cursor that no list call of this API returned."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
    """Pass it back for the next page; None when there is no more."""


@dataclass(frozen=True, slots=True)
class EventSummary:
    id: str
    type: str
    status: EventStatus
    received_at_ms: int
    finished_at_ms: int | None
    outcome: str | None
    handlers: dict[str, HandlerStatus]
    """Where each handler that matched the event stands (done, dead, retry, ...), by name."""
    search_terms: tuple[str, ...] = ()
    erased_at_ms: int | None = None
    """When its personal data was erased (``events erase``); None: never."""

    @property
    def business_keys(self) -> BusinessKeys:
        return BusinessKeys.of(self.search_terms)


@dataclass(frozen=True, slots=True)
class EventFilter:
    event_type: str | None = None
    status: EventStatus | None = None
    since_ms: int | None = None
    """Received at or after this time (ms since the epoch)."""
    session_id: str | None = None
    customer_id: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    """(key, value) pairs, every one held; keys must be searchable."""
    text: str | None = None
    """A session id, a customer id or a searchable metadata value (the search box)."""

    def matches(self, event: EventSummary) -> bool:
        return (self.event_type is None or event.type == self.event_type) and (
            self.status is None or event.status == self.status
        )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    event_type: str | None = None
    handler: str | None = None
    reason: str | None = None
    since_ms: int | None = None
    """Dead-lettered at or after this time (ms since the epoch)."""
    session_id: str | None = None
    customer_id: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    """Of an event holding these (key, value) pairs; keys must be searchable."""

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.event_type is None or letter.event_type == self.event_type)
            and (self.handler is None or letter.handler == self.handler)
            and (self.reason is None or letter.reason == self.reason)
            and (self.since_ms is None or letter.dead_lettered_at >= self.since_ms)
        )


@dataclass(frozen=True, slots=True)
class ReindexReport:
    looked_at: int = 0
    indexed: int = 0
    """Events that got their search terms (possibly none: an event without a session...)."""
    already_indexed: int = 0
    """Indexed at intake or by an earlier run, or gone meanwhile."""


@dataclass(frozen=True, slots=True)
class HandlerOverview:
    """A handler as the operator sees it: its admission state, and its limits if a running
    worker registered it (``live`` None: no running worker has it)."""

    flow: HandlerFlow
    live: LiveHandler | None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: list[str]
    no_event: list[str]
    """Letters that hold no event to replay (a signed body that was not a usable event)."""
    needs_force: list[str]
    """``invalid_payload`` letters of a stored event, not replayed without ``force``: they
    would fail the same way again until the handler's model is fixed."""
    gone: list[str]
    """Letters replayed or purged by someone else since they were selected: not failures."""
    erased: list[str]
    """Letters whose personal data was erased: refused, nothing is left to replay."""

    @property
    def skipped(self) -> list[str]:
        """Letters not replayed, for either reason above."""
        return self.no_event + self.needs_force


@dataclass(frozen=True, slots=True)
class ErasureReport:
    events: int
    """Events whose raw body, headers and search entries were erased."""
    dead_letters: int
    pending: list[str]
    """Events still being processed, left as they are: erase again once they finished."""


class OperatorApi:
    """The operator's API over one Redis; ``queue_name`` and ``dedupe_ttl_seconds`` must be
    the receivers' and workers' own (``LOOPS_QUEUE_NAME``, ``LOOPS_DEDUPE_TTL_SECONDS``),
    ``replay_history_limit`` is ``LOOPS_REPLAY_HISTORY_LIMIT``, ``search_metadata_keys``
    ``LOOPS_SEARCH_METADATA_KEYS``."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        dedupe_ttl_seconds: int,
        replay_history_limit: int,
        search_metadata_keys: Sequence[str],
    ) -> None:
        self._redis = redis
        self._metadata_keys = tuple(search_metadata_keys)
        self._queue_name = queue_name
        self._dedupe_ttl_seconds = dedupe_ttl_seconds
        self._replay_history_limit = replay_history_limit
        self._store = EventStore(
            redis, dedupe_ttl_seconds=dedupe_ttl_seconds, queue_name=queue_name
        )

    async def get_event(self, event_id: str) -> StoredEvent:
        event = await self._store.get(event_id)
        if event is None:
            raise NotFound(f"event {event_id!r} not found (never received, or expired)")
        return event

    async def list_events(
        self, where: EventFilter = EventFilter(), *, limit: int = 50, cursor: str | None = None
    ) -> Page[EventSummary]:
        """Stored events, newest first. UnsearchableKey for a metadata key not indexed."""
        search = self._search(where, text=where.text)
        if not search:
            index = _Index(keys.EVENT_INDEX, self._event_summaries)
            return await index.page(self._redis, where.since_ms, where.matches, limit, cursor)

        async def load(ids: list[str]) -> list[list[EventSummary]]:
            return [
                [event]
                if event is not None and search.held_by(event.search_terms) and where.matches(event)
                else []
                for event in await self._event_summaries(ids)
            ]

        return await _search_page(self._redis, search, where.since_ms, load, limit, cursor)

    def _search(
        self, where: EventFilter | DeadLetterFilter, *, text: str | None = None
    ) -> SearchTerms:
        """What a filter's session, customer and metadata (and the search box) ask for."""
        return SearchTerms.build(
            self._metadata_keys,
            session_id=where.session_id,
            customer_id=where.customer_id,
            metadata=where.metadata,
            text=text,
        )

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        letter = await get_dead_letter(self._redis, letter_id)
        if letter is None:
            raise NotFound(f"dead letter {letter_id!r} not found")
        return letter

    async def dead_letters_of_event(self, event_id: str) -> list[DeadLetter]:
        """Every dead letter of one event, as the event's own set of letter ids lists them."""
        ids = await self._redis.smembers(keys.event_dead_letters_key(event_id))  # type: ignore[misc]
        letters = []
        for letter_id in sorted(ids):
            try:
                letters.append(await self.get_dead_letter(letter_id.decode()))
            except NotFound:
                continue
        return letters

    async def list_dead_letters(
        self,
        where: DeadLetterFilter = DeadLetterFilter(),
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[DeadLetter]:
        """Dead letters, newest first, without their raw bodies and tracebacks.

        Filtered by session, customer or metadata, they are those of the matching events, by
        the events' receipt time, newest first; a page holds whole events' letters."""
        search = self._search(where)
        if not search:
            index = _Index(keys.DEAD_LETTER_INDEX, self._letter_summaries)
            return await index.page(self._redis, where.since_ms, where.matches, limit, cursor)

        async def load(event_ids: list[str]) -> list[list[DeadLetter]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event_id in event_ids:
                    pipe.hget(keys.SEARCH_TERMS, event_id)
                    pipe.smembers(keys.event_dead_letters_key(event_id))
                replies = await pipe.execute()
            per_event: list[list[str]] = []
            for terms, letter_ids in zip(replies[0::2], replies[1::2], strict=True):
                held = terms and letter_ids and search.held_by(unpack_terms(terms))
                per_event.append(sorted(i.decode() for i in letter_ids) if held else [])
            letters = iter(await self._letter_summaries([i for ids in per_event for i in ids]))
            return [
                [letter for _ in ids if (letter := next(letters)) and where.matches(letter)]
                for ids in per_event
            ]

        return await _search_page(self._redis, search, None, load, limit, cursor)

    async def dead_letters_named(self, name: str) -> list[DeadLetter]:
        """The dead letter whose id is ``name``, else every letter of the event whose id it
        is: people copy whichever id they see. NotFound if it names neither."""
        try:
            return [await self.get_dead_letter(name)]
        except NotFound:
            letters = await self.dead_letters_of_event(name)
        if not letters:
            raise NotFound(f"no dead letter {name!r}, and no event {name!r} with dead letters")
        return letters

    async def select_dead_letters(
        self, ids: Sequence[str] = (), where: DeadLetterFilter | None = None
    ) -> list[DeadLetter]:
        """The letters a bulk replay or purge acts on: those named, by letter or event id
        (``dead_letters_named``; each letter once), else every letter matching ``where``,
        newest first."""
        if ids:
            named: dict[str, DeadLetter] = {}
            for name in ids:
                named |= {letter.id: letter for letter in await self.dead_letters_named(name)}
            return list(named.values())
        selected: list[DeadLetter] = []
        cursor: str | None = None
        while True:
            page = await self.list_dead_letters(
                where or DeadLetterFilter(), limit=MAX_PAGE_SIZE, cursor=cursor
            )
            selected += page.items
            if page.next_cursor is None:
                return selected
            cursor = page.next_cursor

    async def count_dead_letters(self, where: DeadLetterFilter = DeadLetterFilter()) -> int:
        """How many letters match ``where``: what a bulk replay or purge would act on, for a
        dry run. A filter on time alone is one ZCOUNT; others read the letters' summaries."""
        if where == DeadLetterFilter(since_ms=where.since_ms):
            low: float | str = where.since_ms if where.since_ms is not None else "-inf"
            return int(await self._redis.zcount(keys.DEAD_LETTER_INDEX, low, "+inf"))
        return len(await self.select_dead_letters((), where))

    async def replay_dead_letters(
        self,
        letters: Sequence[DeadLetter],
        *,
        force: bool = False,
        dry_run: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ReplayReport:
        """Put each letter's event back on the queue with fresh attempts for its handler (for
        every handler with ``force``); ``on_progress(done, total)`` after each one. Each
        letter moves in one atomic step, so an interrupted run can simply be repeated. With
        ``dry_run`` nothing changes: the report says what a real run would do (``replayed``:
        would be; ``gone`` stays empty, as that is known only when trying)."""
        outcomes: dict[ReplayResult, list[str]] = {result: [] for result in ReplayResult}
        for done, letter in enumerate(letters, start=1):
            if dry_run:
                result = replay_refused(letter, force=force) or ReplayResult.REPLAYED
            else:
                result = await replay_dead_letter(
                    self._redis,
                    letter,
                    queue_name=self._queue_name,
                    history_limit=self._replay_history_limit,
                    force=force,
                )
            outcomes[result].append(letter.id)
            if on_progress is not None:
                on_progress(done, len(letters))
        return ReplayReport(
            replayed=outcomes[ReplayResult.REPLAYED],
            no_event=outcomes[ReplayResult.NO_EVENT],
            needs_force=outcomes[ReplayResult.NEEDS_FORCE],
            gone=outcomes[ReplayResult.GONE],
            erased=outcomes[ReplayResult.ERASED],
        )

    async def purge_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Delete letters for good; returns how many were still there to delete."""
        purged = 0
        for letter in letters:
            purged += await purge_dead_letter(
                self._redis, letter, dedupe_ttl_seconds=self._dedupe_ttl_seconds
            )
        return purged

    async def erase_customer(self, customer_id: str) -> ErasureReport:
        """Erase the personal data of every finished event of one customer (as its search
        index finds them) and of their dead letters: raw bodies and kept headers emptied,
        search entries removed; ids, types, times and outcomes stay, marked erased."""
        script = register_script(self._redis, "erase")
        index = keys.search_key(keys.customer_term(customer_id))
        event_ids = [raw.decode() for raw in await self._redis.zrange(index, 0, -1)]
        now_ms = int(time.time() * 1000)
        events = letters = 0
        pending: list[str] = []
        for event_id in event_ids:
            erased, letters_erased = await script(
                keys=[
                    keys.event_key(event_id),
                    keys.event_dead_letters_key(event_id),
                    keys.SEARCH_TERMS,
                ],
                args=[
                    event_id,
                    keys.SEARCH_PREFIX,
                    keys.DEAD_LETTER_PREFIX,
                    now_ms,
                ],
            )
            if int(erased) == ERASE_PENDING:
                pending.append(event_id)
            events += int(erased) == 1
            letters += int(letters_erased)
        return ErasureReport(events=events, dead_letters=letters, pending=pending)

    async def count_customer_events(self, customer_id: str) -> int:
        """How many events an erasure of this customer would look at."""
        index = keys.search_key(keys.customer_term(customer_id))
        return int(await self._redis.zcard(index))

    async def reindex_events(
        self, on_progress: Callable[[ReindexReport, int], None] | None = None
    ) -> ReindexReport:
        """Make the events stored before search existed searchable: each listed event whose
        record holds no search terms gets them, from its raw body, with the current
        ``search_metadata_keys``. Each event is one atomic script that leaves an indexed event
        alone, so an interrupted run is simply run again (it passes over what is done).
        ``on_progress(report so far, events listed)`` after each batch."""
        script = register_script(self._redis, "index_event")
        total = int(await self._redis.zcard(keys.EVENT_INDEX))
        report = ReindexReport()
        batch: list[str] = []
        async for member, _ in self._redis.zscan_iter(keys.EVENT_INDEX, count=REINDEX_BATCH):
            batch.append(member.decode())
            if len(batch) == REINDEX_BATCH:
                report = await self._reindex_batch(script, batch, report)
                batch = []
                if on_progress is not None:
                    on_progress(report, total)
        if batch:
            report = await self._reindex_batch(script, batch, report)
        return report

    async def _reindex_batch(
        self, script: AsyncScript, event_ids: list[str], report: ReindexReport
    ) -> ReindexReport:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hget(keys.event_key(event_id), "raw")
                pipe.hexists(keys.SEARCH_TERMS, event_id)
            rows = await pipe.execute()
        indexed = already = 0
        for event_id, raw, indexed_before in zip(event_ids, rows[0::2], rows[1::2], strict=True):
            if raw is None or indexed_before:
                already += 1
                continue
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError:
                document = {}
            found = (
                search_terms(document, self._metadata_keys) if isinstance(document, dict) else ()
            )
            indexed += int(
                await script(
                    keys=[keys.event_key(event_id), keys.SEARCH_TERMS],
                    args=[event_id, keys.SEARCH_PREFIX, pack_terms(found)],
                )
            )
        return ReindexReport(
            looked_at=report.looked_at + len(event_ids),
            indexed=report.indexed + indexed,
            already_indexed=report.already_indexed + already,
        )

    async def stats(self) -> Stats:
        return await collect_stats(self._redis, queue_name=self._queue_name)

    async def retry_now(self, event_id: str) -> int:
        """Run the event's scheduled retries now; how many there were (0: none scheduled)."""
        made_due = await self._store.retry_now(event_id, int(time.time() * 1000))
        if made_due is None:
            raise NotFound(f"event {event_id!r} not found")
        return made_due

    async def handlers(self, names: Sequence[str] = ()) -> list[HandlerOverview]:
        """The handlers running workers have registered, and any other handler ``names``
        or paused one, each with its limits and admission state, by name."""
        live = await live_handlers(self._redis)
        wanted = sorted({*live, *names, *await paused_names(self._redis)})
        flows = await handler_flows(self._redis, wanted)
        return [HandlerOverview(flow=flows[name], live=live.get(name)) for name in wanted]

    async def pause_handler(
        self, name: str, *, reason: str | None, by: str, force: bool = False
    ) -> tuple[HandlerPause, bool]:
        """See ``admission.pause_handler``."""
        return await pause_handler(self._redis, name, reason=reason, by=by, force=force)

    async def resume_handler(self, name: str) -> Resumed:
        """See ``admission.resume_handler``."""
        return await resume_handler(self._redis, name, queue_name=self._queue_name)

    async def _event_summaries(self, ids: list[str]) -> list[EventSummary | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hmget(keys.event_key(event_id), _EVENT_SUMMARY_FIELDS)
                pipe.hget(keys.SEARCH_TERMS, event_id)
            rows = await pipe.execute()
        handlers = await self._handler_statuses(ids)
        summaries: list[EventSummary | None] = []
        for event_id, row, terms in zip(ids, rows[0::2], rows[1::2], strict=True):
            _, event_type, status, received_at, finished_at, outcome, erased_at = row
            if status is None or received_at is None:
                summaries.append(None)
                continue
            summaries.append(
                EventSummary(
                    id=event_id,
                    type=(event_type or b"").decode(),
                    status=EventStatus(status.decode()),
                    received_at_ms=int(received_at),
                    finished_at_ms=int(finished_at) if finished_at else None,
                    outcome=outcome.decode() if outcome else None,
                    search_terms=unpack_terms(terms) if terms else (),
                    erased_at_ms=int(erased_at) if erased_at else None,
                    handlers=handlers[event_id],
                )
            )
        return summaries

    async def _handler_statuses(self, ids: list[str]) -> dict[str, dict[str, HandlerStatus]]:
        """Per event, its handlers' statuses: the names of its hash's handler fields first,
        then those fields alone (the hash also holds the raw body, not read for a list)."""
        prefix = keys.HANDLER_FIELD_PREFIX.encode()
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hkeys(keys.event_key(event_id))
            names = await pipe.execute()
        fields_of = {
            event_id: sorted(field for field in fields if field.startswith(prefix))
            for event_id, fields in zip(ids, names, strict=True)
        }
        wanted = [event_id for event_id in ids if fields_of[event_id]]
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in wanted:
                pipe.hmget(keys.event_key(event_id), fields_of[event_id])
            values = await pipe.execute()
        statuses: dict[str, dict[str, HandlerStatus]] = {event_id: {} for event_id in ids}
        for event_id, states in zip(wanted, values, strict=True):
            for field, state in zip(fields_of[event_id], states, strict=True):
                if state is not None:
                    name = field[len(prefix) :].decode()
                    statuses[event_id][name] = HandlerState.from_json(state).status
        return statuses

    async def _letter_summaries(self, ids: list[str]) -> list[DeadLetter | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for letter_id in ids:
                pipe.hmget(keys.dead_letter_key(letter_id), _LETTER_SUMMARY_FIELDS)
            rows = await pipe.execute()
        letters: list[DeadLetter | None] = []
        for row in rows:
            stored = {
                name.encode(): value
                for name, value in zip(_LETTER_SUMMARY_FIELDS, row, strict=True)
                if value is not None
            }
            letters.append(DeadLetter.from_redis(stored) if b"id" in stored else None)
        return letters


@dataclass(frozen=True, slots=True)
class _Index(Generic[T]):
    """A sorted set of ids scored by time, and how to load the records it names."""

    key: str
    load: Callable[[list[str]], Awaitable[Sequence[T | None]]]

    async def page(
        self,
        redis: Redis,
        since_ms: int | None,
        keep: Callable[[T], bool],
        limit: int,
        cursor: str | None,
    ) -> Page[T]:
        """One page, newest first, of the records ``keep`` accepts.

        The cursor is the last returned entry (score, id): the next page starts just after
        it, so entries added or removed meanwhile neither repeat nor hide others. Entries
        whose record is gone are skipped.
        """
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        low: float | str = since_ms if since_ms is not None else "-inf"
        high: float | str = "+inf"
        offset = 0
        if cursor is not None:
            score, member = _decode_cursor(cursor)
            high = score
            ties = await redis.zrangebyscore(self.key, score, score)
            offset = sum(1 for tie in ties if tie >= member.encode())
        items: list[T] = []
        last: tuple[float, str] | None = None
        scanned = 0
        chunk_size = max(limit, 100)
        while scanned < SCAN_LIMIT:
            entries = await redis.zrevrangebyscore(
                self.key, high, low, start=offset, num=chunk_size, withscores=True
            )
            if not entries:
                return Page(items, None)
            ids = [member.decode() for member, _ in entries]
            records = await self.load(ids)
            for member_id, (_, score_value), item in zip(ids, entries, records, strict=True):
                scanned += 1
                if item is not None and keep(item):
                    items.append(item)
                    if len(items) == limit:
                        return Page(items, _encode_cursor(score_value, member_id))
                last = (score_value, member_id)
            if len(entries) < chunk_size:
                return Page(items, None)
            offset += len(entries)
        return Page(items, _encode_cursor(*last) if last is not None else None)


async def _search_page(
    redis: Redis,
    search: SearchTerms,
    since_ms: int | None,
    load: Callable[[list[str]], Awaitable[list[list[T]]]],
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """One page, newest first, of what ``load`` finds for the events of the search indexes.

    An index holds the events of one value (a session, a customer, an order), so the entries
    of every index read are merged in memory, at most ``SCAN_LIMIT`` of each a call; the
    cursor is the last entry returned (score, id), as for the other lists. ``load`` gives,
    per event id, the items of that event that match, none if the event does not.
    """
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    low: float | str = since_ms if since_ms is not None else "-inf"
    high: float | str = "+inf"
    after: tuple[float, str] | None = None
    if cursor is not None:
        score, member = _decode_cursor(cursor)
        high, after = score, (score, member)
    entries: dict[str, float] = {}
    truncated = False
    for key in search.index_keys():
        found = await redis.zrevrangebyscore(
            key, high, low, start=0, num=SCAN_LIMIT, withscores=True
        )
        truncated = truncated or len(found) == SCAN_LIMIT
        for member, score_value in found:
            entries[member.decode()] = score_value
    ordered = sorted(((score, member) for member, score in entries.items()), reverse=True)
    if after is not None:
        ordered = [entry for entry in ordered if entry < after]
    items: list[T] = []
    chunk_size = max(limit, 100)
    for start in range(0, len(ordered), chunk_size):
        chunk = ordered[start : start + chunk_size]
        for (score_value, member), found_items in zip(
            chunk, await load([member for _, member in chunk]), strict=True
        ):
            items += found_items
            if len(items) >= limit:
                return Page(items, _encode_cursor(score_value, member))
    if truncated and ordered:
        return Page(items, _encode_cursor(*ordered[-1]))
    return Page(items, None)


def _encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{int(score)}:{member}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = text.split(":", 1)
        return int(score), member
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
