"""The operator's commands: ``events show``, ``dlq list|show|replay|purge`` and ``stats``.

Each reads or changes Redis through the workers' API, prints for a person by default and
JSON with ``--json``. Errors are raised as ``CommandFailed`` (exit 1) for the CLI to print.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from loops_webhooks.settings import Settings
from loops_webhooks.workers.dead_letters import DeadLetter, get_dead_letter, list_dead_letters
from loops_webhooks.workers.event_store import EventStore
from loops_webhooks.workers.replay import ReplayResult, purge_dead_letter, replay_dead_letter
from loops_webhooks.workers.stats import collect_stats

__all__ = ["CommandFailed", "UsageError", "parse_since", "run_operation"]

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

Operation = Callable[[Redis, argparse.Namespace, Settings], Awaitable[int]]


class CommandFailed(Exception):
    """A runtime failure the user should read (event not found, ...): exit code 1."""


class UsageError(Exception):
    """The command line asks for something impossible or incomplete: exit code 2."""


def parse_since(text: str) -> int:
    """``--since``: an ISO 8601 time, or a duration ago such as ``90s``, ``15m``, ``2h``, ``7d``.

    Returns milliseconds since the epoch; raises ArgumentTypeError (a usage error).
    """
    relative = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if relative:
        amount, unit = int(relative[1]), relative[2]
        seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return int((datetime.now(UTC) - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2025-01-15T10:30:00Z) or 90s, 15m, 2h, 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def run_operation(
    operation: Operation, redis_url: str, args: argparse.Namespace, settings: Settings
) -> int:
    async def run() -> int:
        redis = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        try:
            return await operation(redis, args, settings)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


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
    return data


async def show_event(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    store = EventStore(redis, dedupe_ttl_seconds=settings.dedupe_ttl_seconds)
    event = await store.get(args.event_id)
    if event is None:
        raise CommandFailed(f"event {args.event_id!r} not found (never received, or expired)")
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
    story = {
        "id": event.event_id,
        "type": event.event_type,
        "status": event.status,
        "outcome": event.outcome,
        "received_at": _time(event.received_at_ms),
        "finished_at": _time(event.finished_at_ms),
        "handlers": handlers,
    }
    if args.json:
        _print_json(story)
        return 0
    print(f"event {event.event_id}  type {event.event_type}  status {event.status}")
    print(f"  received {story['received_at']}  finished {story['finished_at']}")
    if event.outcome:
        print(f"  outcome {event.outcome}")
    if not handlers:
        print("  no handler has run yet")
    for name, state in handlers.items():
        line = f"  {name}: {state['status']}, {state['attempts']} attempt(s)"
        if state["next_attempt_at"] != "-":
            line += f", next at {state['next_attempt_at']}"
        print(line)
        if state["last_error"]:
            print(f"    last error: {state['last_error']}")
    return 0


async def _select(redis: Redis, args: argparse.Namespace) -> list[DeadLetter]:
    """Dead letters by id, or by filters (type, handler, since), newest first."""
    if getattr(args, "ids", None):
        letters = []
        for letter_id in args.ids:
            letter = await get_dead_letter(redis, letter_id)
            if letter is None:
                raise CommandFailed(f"dead letter {letter_id!r} not found")
            letters.append(letter)
        return letters
    letters = await list_dead_letters(redis, since_ms=args.since or 0)
    if args.type:
        letters = [letter for letter in letters if letter.event_type == args.type]
    if args.handler:
        letters = [letter for letter in letters if letter.handler == args.handler]
    return letters


async def list_letters(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    letters = (await _select(redis, args))[: args.limit]
    if args.json:
        _print_json([_letter_json(letter, full=False) for letter in letters])
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for letter in letters:
        print(
            f"{letter.id}  {letter.event_type or '-'}  {letter.handler or '-'}  {letter.reason}  "
            f"{letter.attempts} attempt(s)  {_time(letter.dead_lettered_at)}"
        )
    return 0


async def show_letter(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    letter = await get_dead_letter(redis, args.id)
    if letter is None:
        raise CommandFailed(f"dead letter {args.id!r} not found")
    data = _letter_json(letter, full=True)
    if args.json:
        _print_json(data)
        return 0
    for name in SHOWN_FIELDS:
        print(f"{name}: {data[name]}")
    print(f"error: {letter.error_type}: {letter.error_message}")
    if letter.traceback:
        print("traceback:\n" + letter.traceback.rstrip())
    print("headers: " + orjson.dumps(data["headers"]).decode())
    print("raw event:\n" + data["raw"])
    return 0


def _has_selection(args: argparse.Namespace) -> bool:
    return bool(args.ids or args.all or args.type or args.handler or args.since)


async def replay_letters(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    if not _has_selection(args):
        raise UsageError("say what to replay: dead letter ids, --all, or a filter")
    letters = await _select(redis, args)
    if args.dry_run:
        for letter in letters:
            print(f"would replay {letter.id}  ({letter.reason}, {letter.handler or '-'})")
        print(f"{len(letters)} dead letter(s) would be replayed (dry run: nothing changed)")
        return 0
    counts: Counter[str] = Counter()
    for done, letter in enumerate(letters, start=1):
        try:
            result = await replay_dead_letter(
                redis, letter, queue_name=settings.queue_name, force=args.force
            )
        except Exception as error:
            counts["failed"] += 1
            print(f"failed {letter.id}: {error}", file=sys.stderr)
            continue
        counts[result] += 1
        if result is ReplayResult.SKIPPED:
            why = "no stored event" if not letter.event_id else "use --force once the model fits"
            print(f"skipped {letter.id}: {letter.reason} ({why})")
        if len(letters) > PROGRESS_EVERY and done % PROGRESS_EVERY == 0:
            print(f"... {done}/{len(letters)}", file=sys.stderr)
    print(
        f"replayed {counts['replayed']}, skipped {counts['skipped']}, failed {counts['failed']}, "
        f"taken meanwhile by another replay or a purge {counts['missing']}"
    )
    return 1 if counts["failed"] else 0


async def purge_letters(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    if not _has_selection(args):
        raise UsageError("say what to purge: dead letter ids, --all, or a filter")
    letters = await _select(redis, args)
    if not letters:
        print("no dead letters match")
        return 0
    if not args.yes:
        answer = _ask(f"permanently delete {len(letters)} dead letter(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("aborted; nothing was deleted (pass --yes to skip this question)")
    purged = 0
    for letter in letters:
        purged += await purge_dead_letter(
            redis, letter, dedupe_ttl_seconds=settings.dedupe_ttl_seconds
        )
    print(f"purged {purged} dead letter(s)")
    return 0


def _ask(question: str) -> str:
    print(question, end="", flush=True)
    line = sys.stdin.readline()
    if not line:
        print()
    return line


async def show_stats(redis: Redis, args: argparse.Namespace, settings: Settings) -> int:
    while True:
        stats = await collect_stats(redis, queue_name=settings.queue_name)
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
                f"last hour: processed {hour.get('done', 0)}, failed {hour.get('retry', 0)} "
                f"(retried) + {hour.get('dead_letter', 0)} (dead-lettered), "
                f"unhandled {hour.get('unhandled', 0)}"
            )
            print("oldest pending event: " + ("none" if age is None else f"{age:.1f}s old"))
        if not args.watch:
            return 0
        sys.stdout.flush()
        await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        print()
