"""The operator's commands: ``events show|list|erase|retry-now``,
``dlq list|show|replay|purge``, ``handlers pause|resume``, ``reindex`` and ``stats``.

Each parses nothing and decides nothing: it calls ``loops_webhooks.workers.operator_api`` and
prints the result for a person, or JSON with ``--json``. Redis errors are caught around the
command only (``run_operator_command``), so they are never confused with other failures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from loops_webhooks.settings import Settings
from loops_webhooks.workers import operator_api
from loops_webhooks.workers.admission import HandlerFlow, HandlerNotLive
from loops_webhooks.workers.connection import open_redis
from loops_webhooks.workers.dead_letters import DeadLetter
from loops_webhooks.workers.event_store import EventStatus
from loops_webhooks.workers.operator_api import (
    DeadLetterFilter,
    EventFilter,
    NotFound,
    OperatorApi,
    Page,
    ReindexReport,
    UnsearchableKey,
)

__all__ = [
    "CommandFailed",
    "RedisUnreachable",
    "UsageError",
    "parse_metadata",
    "parse_since",
    "read_handler_flows",
    "run_operator_command",
]

log = structlog.get_logger(logger_name="loops_webhooks.operator_commands")

PROGRESS_EVERY = 100
SHOWN_FIELDS = (
    "id",
    "reason",
    "event_id",
    "event_type",
    "handler",
    "attempts",
    "first_attempt_at",
    "last_attempt_at",
    "dead_lettered_at",
    "received_at",
)
WATCH_INTERVAL_SECONDS = 2.0

OperatorCommand = Callable[[OperatorApi, argparse.Namespace], Awaitable[int]]


class CommandFailed(Exception):
    """A runtime failure the user should read (event not found, ...): exit code 1."""


class UsageError(Exception):
    """The command line asks for something impossible or incomplete: exit code 2."""


class RedisUnreachable(Exception):
    """Redis refused or did not answer a command's call: exit code 1."""


def parse_since(text: str) -> int:
    """``--since``: see ``workers.operator_api.parse_since``; a bad value is a usage error."""
    try:
        return operator_api.parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"invalid time {error}") from None


def parse_metadata(text: str) -> tuple[str, str]:
    """``--metadata KEY=VALUE``."""
    name, equals, value = text.partition("=")
    if not equals or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return name, value


def run_operator_command(
    command: OperatorCommand, redis_url: str, args: argparse.Namespace, settings: Settings
) -> int:
    async def run() -> int:
        redis = open_redis(
            redis_url,
            sentinel_password=settings.sentinel_password,
            socket_timeout=10,
            socket_connect_timeout=5,
        )
        api = OperatorApi(
            redis,
            queue_name=settings.queue_name,
            dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
            replay_history_limit=settings.replay_history_limit,
            search_metadata_keys=settings.search_metadata_keys,
        )
        try:
            return await command(api, args)
        except NotFound as error:
            raise CommandFailed(str(error.args[0])) from None
        except UnsearchableKey as error:
            raise UsageError(str(error)) from None
        except (RedisError, OSError) as error:
            raise RedisUnreachable(str(error)) from None
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _short_time(ms: int) -> str:
    """To the second, in UTC (``2025-01-15T10:35:00Z``): for lines that must be short."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _letter_json(letter: DeadLetter, *, full: bool) -> dict[str, Any]:
    data = asdict(letter)
    data["raw"] = letter.raw.decode(errors="replace")
    data["headers"] = orjson.loads(letter.headers or "{}")
    if not full:
        for name in ("raw", "headers", "traceback"):
            data.pop(name)
    for name in ("first_attempt_at", "last_attempt_at", "dead_lettered_at", "received_at"):
        data[name] = _time(data[name])
    data["erased_at"] = _time(letter.erased_at) if letter.erased_at else None
    return data


async def show_event(api: OperatorApi, args: argparse.Namespace) -> int:
    event = await api.get_event(args.event_id)
    handlers = {
        name: {
            "status": state.status,
            "attempts": state.attempts,
            "last_error": state.last_error,
            "first_attempt_at": _time(state.first_attempt_at),
            "last_attempt_at": _time(state.last_attempt_at),
            "next_attempt_at": _time(state.next_attempt_at),
        }
        for name, state in event.handlers.items()
    }
    replaced = {
        name: [
            {
                "status": state.status,
                "attempts": state.attempts,
                "last_error": state.last_error,
                "first_attempt_at": _time(state.first_attempt_at),
                "last_attempt_at": _time(state.last_attempt_at),
            }
            for state in states
        ]
        for name, states in event.history.items()
    }
    story = {
        "id": event.event_id,
        "type": event.event_type,
        "status": event.status,
        "outcome": event.outcome,
        "received_at": _time(event.received_at_ms),
        "finished_at": _time(event.finished_at_ms),
        "erased_at": _time(event.erased_at_ms) if event.erased_at_ms else None,
        "handlers": handlers,
        "before_replays": replaced,
    }
    if args.json:
        _print_json(story)
        return 0
    print(f"event {event.event_id}  type {event.event_type}  status {event.status}")
    print(f"  received {story['received_at']}  finished {story['finished_at']}")
    if event.outcome:
        print(f"  outcome {event.outcome}")
    if event.erased_at_ms:
        print(f"  erased {story['erased_at']}: its raw body and headers are gone")
    if not handlers:
        print("  no handler has run yet")
    for name, state in handlers.items():
        line = f"  {name}: {state['status']}, {state['attempts']} attempt(s)"
        if state["next_attempt_at"] != "-":
            line += f", next at {state['next_attempt_at']}"
        print(line)
        if state["last_error"]:
            print(f"    last error: {state['last_error']}")
    for name, states in replaced.items():
        for earlier in states:
            line = f"  {name} (before a replay): {earlier['status']}, "
            line += f"{earlier['attempts']} attempt(s), last at {earlier['last_attempt_at']}"
            print(line)
            if earlier["last_error"]:
                print(f"    last error: {earlier['last_error']}")
    return 0


async def list_events(api: OperatorApi, args: argparse.Namespace) -> int:
    status = EventStatus(args.status) if args.status else None
    where = EventFilter(
        event_type=args.type,
        status=status,
        since_ms=args.since,
        session_id=args.session,
        customer_id=args.customer,
        metadata=tuple(args.metadata),
    )
    page = await api.list_events(where, limit=args.limit, cursor=args.cursor)
    rows: list[dict[str, Any]] = []
    for event in page.items:
        found_by = event.business_keys
        rows.append(
            {
                "id": event.id,
                "type": event.type,
                "status": event.status,
                "outcome": event.outcome,
                "received_at": _time(event.received_at_ms),
                "finished_at": _time(event.finished_at_ms),
                "session": found_by.session_id,
                "customer": found_by.customer_id,
                "metadata": found_by.metadata,
                "erased": event.erased_at_ms is not None,
            }
        )
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no events")
    for row in [] if args.json else rows:
        outcome = f"  {row['outcome']}" if row["outcome"] else ""
        keys = [f"session {row['session']}"] if row["session"] else []
        keys += [f"customer {row['customer']}"] if row["customer"] else []
        keys += [f"{name} {value}" for name, value in row["metadata"].items()]
        found_by_text = ("  " + ", ".join(keys)) if keys else ""
        found_by_text += "  erased" if row["erased"] else ""
        print(
            f"{row['id']}  {row['type']}  {row['status']}{outcome}  {row['received_at']}"
            + found_by_text
        )
    _print_next_page(page)
    return 0


def _print_next_page(page: Page[Any]) -> None:
    """On stderr, so ``--json`` output stays one JSON document."""
    if page.next_cursor is not None:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    """The dead-letter filter the options give: ``--type``, ``--handler``, ``--reason``,
    ``--since``, ``--session``, ``--customer``, ``--metadata``."""
    return DeadLetterFilter(
        event_type=args.type,
        handler=args.handler,
        reason=args.reason,
        since_ms=args.since,
        session_id=args.session,
        customer_id=args.customer,
        metadata=tuple(args.metadata),
    )


async def _select(api: OperatorApi, args: argparse.Namespace) -> list[DeadLetter]:
    """Dead letters by id, or by the filters, newest first."""
    return await api.select_dead_letters(getattr(args, "ids", None) or (), _filter(args))


async def list_letters(api: OperatorApi, args: argparse.Namespace) -> int:
    page = await api.list_dead_letters(_filter(args), limit=args.limit, cursor=args.cursor)
    letters = page.items
    if args.json:
        _print_json([_letter_json(letter, full=False) for letter in letters])
    elif not letters:
        print("no dead letters")
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    for letter in [] if args.json else letters:
        line = "  ".join(
            (
                letter.event_id or letter.id,
                _function_name(letter.handler) or "-",
                letter.event_type or "-",
                letter.reason,
                f"{letter.attempts} attempt(s)",
                _short_time(letter.dead_lettered_at),
                " ".join(_error_of(letter).split()),
            )
        )
        print(_shortened(line, columns) if columns else line)
    _print_next_page(page)
    return 0


def _function_name(handler: str) -> str:
    """A handler's name without its module (``myshop.webhooks:award_points`` gives
    ``award_points``): the full name is in ``dlq show`` and ``--json``."""
    return handler.rpartition(":")[2]


def _error_of(letter: DeadLetter) -> str:
    if letter.error_type and letter.error_message:
        return f"{letter.error_type}: {letter.error_message}"
    return letter.error_type or letter.error_message or "-"


def _shortened(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters, with an ellipsis if it is longer."""
    return line if len(line) <= width else line[: width - 1] + "…"


async def show_letter(api: OperatorApi, args: argparse.Namespace) -> int:
    """One dead letter by its id; given an event id instead, every letter of that event (JSON:
    a list)."""
    letters = await api.dead_letters_named(args.id)
    one = [letter.id for letter in letters] == [args.id]
    if args.json:
        shown = [_letter_json(letter, full=True) for letter in letters]
        _print_json(shown[0] if one else shown)
        return 0
    for index, letter in enumerate(letters):
        if index:
            print()
        _print_letter(letter)
    return 0


def _print_letter(letter: DeadLetter) -> None:
    data = _letter_json(letter, full=True)
    for name in SHOWN_FIELDS:
        print(f"{name}: {data[name]}")
    if letter.erased_at:
        print(f"erased: {data['erased_at']} (raw body and headers removed)")
    print(f"error: {_error_of(letter)}")
    if letter.traceback:
        print("traceback:\n" + letter.traceback.rstrip())
    print("headers: " + orjson.dumps(data["headers"]).decode())
    print("raw event:\n" + data["raw"])


def _has_selection(args: argparse.Namespace) -> bool:
    return bool(
        args.ids
        or args.all
        or args.type
        or args.handler
        or args.reason
        or args.since
        or args.session
        or args.customer
        or args.metadata
    )


async def replay_letters(api: OperatorApi, args: argparse.Namespace) -> int:
    if not _has_selection(args):
        raise UsageError("say what to replay: dead letter ids, --all, or a filter")
    letters = await _select(api, args)

    def progress(done: int, total: int) -> None:
        if total > PROGRESS_EVERY and done % PROGRESS_EVERY == 0:
            print(f"... {done}/{total}", file=sys.stderr)

    report = await api.replay_dead_letters(
        letters, force=args.force, dry_run=args.dry_run, on_progress=progress
    )
    skip = "would skip" if args.dry_run else "skipped"
    if args.dry_run:
        for letter_id in report.replayed:
            print(f"would replay {letter_id}")
    for letter_id in report.no_event:
        print(f"{skip} {letter_id}: it holds no event to replay (a body that was not one)")
    for letter_id in report.needs_force:
        print(
            f"{skip} {letter_id}: an invalid_payload letter (its stored event did not fit the "
            "handler's model), which would fail the same way again; fix the model, then "
            "replay it with --force"
        )
    refuse = "would refuse" if args.dry_run else "refused"
    for letter_id in report.erased:
        print(f"{refuse} {letter_id}: its personal data was erased, no body is left to replay")
    if args.dry_run:
        print(
            f"would replay {len(report.replayed)}, would skip {len(report.skipped)} "
            "(dry run: nothing changed)"
        )
        return 0
    print(
        f"replayed {len(report.replayed)}, skipped {len(report.skipped)}, "
        f"already gone {len(report.gone)} (replayed or purged meanwhile by someone else)"
    )
    if report.erased:
        print(f"refused {len(report.erased)}: their personal data was erased")
    return 0


async def purge_letters(api: OperatorApi, args: argparse.Namespace) -> int:
    if not _has_selection(args):
        raise UsageError("say what to purge: dead letter ids, --all, or a filter")
    letters = await _select(api, args)
    if not letters:
        print("no dead letters match")
        return 0
    if not args.yes:
        answer = _ask(f"permanently delete {len(letters)} dead letter(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("aborted; nothing was deleted (pass --yes to skip this question)")
    purged = await api.purge_dead_letters(letters)
    print(f"purged {purged} dead letter(s)")
    return 0


def _ask(question: str) -> str:
    print(question, end="", flush=True)
    line = sys.stdin.readline()
    if not line:
        print()
    return line


async def erase_customer(api: OperatorApi, args: argparse.Namespace) -> int:
    count = await api.count_customer_events(args.customer)
    if not count:
        print("no stored event of that customer (events stored before search: run reindex)")
        return 0
    if not args.yes:
        answer = _ask(
            f"erase the raw bodies and headers of {count} event(s) of customer "
            f"{args.customer!r} and of their dead letters? [y/N] "
        )
        if not answer:
            raise UsageError("no answer on stdin: pass --yes to erase without asking")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("aborted; nothing was erased")
    report = await api.erase_customer(args.customer)
    log.info(
        "customer data erased",
        events=report.events,
        dead_letters=report.dead_letters,
        left_pending=len(report.pending),
    )
    print(f"erased {report.events} event(s) and {report.dead_letters} dead letter(s)")
    if report.pending:
        print(
            f"left {len(report.pending)} event(s) still being processed: run this again once "
            "they finished (events list --customer ... --status pending)"
        )
    return 0


async def reindex(api: OperatorApi, args: argparse.Namespace) -> int:
    def progress(report: ReindexReport, total: int) -> None:
        print(
            f"... {report.looked_at}/{total} events looked at, {report.indexed} indexed",
            file=sys.stderr,
        )

    report = await api.reindex_events(on_progress=progress)
    print(
        f"looked at {report.looked_at} event(s): indexed {report.indexed}, "
        f"already indexed {report.already_indexed}"
    )
    return 0


async def show_stats(api: OperatorApi, args: argparse.Namespace) -> int:
    while True:
        stats = await api.stats()
        if args.json:
            _print_json(asdict(stats))
        else:
            age = stats.oldest_pending_age_seconds
            print(
                f"queued {stats.queued}  running {stats.running}  "
                f"scheduled retries {stats.scheduled_retries}  "
                f"pending events {stats.pending_events}"
            )
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(stats.dead_letters_by_reason.items()))
            print(f"dead letters {stats.dead_letters}" + (f" ({reasons})" if reasons else ""))
            hour = stats.last_hour
            print(
                f"last hour: handler attempts done {hour.get('done', 0)}, "
                f"retried {hour.get('retry', 0)}, dead-lettered {hour.get('dead_letter', 0)}; "
                f"events no handler matched {hour.get('unhandled', 0)}"
            )
            print("oldest pending event: " + ("none" if age is None else f"{age:.1f}s old"))
        if not args.watch:
            return 0
        sys.stdout.flush()
        await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        print()


async def pause_handler(api: OperatorApi, args: argparse.Namespace) -> int:
    try:
        pause, made = await api.pause_handler(
            args.name, reason=args.reason, by="cli", force=args.force
        )
    except HandlerNotLive:
        raise UsageError(
            f"no running worker has a handler named {args.name!r} (see `loops-webhooks "
            "handlers`); pass --force to pause it anyway"
        ) from None
    since = _time(pause.since_ms)
    if made:
        _log().info("handler paused", handler=args.name, reason=pause.reason, by="cli")
        print(f"paused {args.name}: its events wait, using no attempt, until it is resumed")
    else:
        print(f"{args.name} was already paused, since {since} (by {pause.by}); kept as it was")
    return 0


async def resume_handler(api: OperatorApi, args: argparse.Namespace) -> int:
    resumed = await api.resume_handler(args.name)
    if resumed.was_paused:
        _log().info("handler resumed", handler=args.name, moved=resumed.moved, by="cli")
        print(f"resumed {args.name}: {resumed.moved} waiting event(s) queued, oldest first")
    else:
        print(f"{args.name} was not paused; {resumed.moved} waiting event(s) queued")
    return 0


async def retry_now(api: OperatorApi, args: argparse.Namespace) -> int:
    made_due = await api.retry_now(args.event_id)
    if not made_due:
        raise CommandFailed(f"event {args.event_id!r} has no retry scheduled")
    _log().info("retries made due now", event_id=args.event_id, retries=made_due, by="cli")
    print(f"{made_due} scheduled retr{'y' if made_due == 1 else 'ies'} of {args.event_id} due now")
    return 0


def _log() -> Any:
    return structlog.get_logger(logger_name="loops_webhooks.cli")


def read_handler_flows(
    redis_url: str, settings: Settings, names: list[str]
) -> dict[str, HandlerFlow]:
    """Each named handler's admission state, and every other paused handler's, for
    ``handlers``; raises `RedisUnreachable`."""

    async def read(api: OperatorApi, _: argparse.Namespace) -> int:
        overviews = await api.handlers(names)
        flows.update({overview.flow.name: overview.flow for overview in overviews})
        return 0

    flows: dict[str, HandlerFlow] = {}
    run_operator_command(read, redis_url, argparse.Namespace(), settings)
    return flows
