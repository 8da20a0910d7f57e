"""The ``loops-webhooks`` command: one entry point for the receiver, the workers and operators.

Exit codes: 0 success, 1 a runtime failure (Redis unreachable, event not found, ...), 2 bad
usage or configuration. Every failure is one line on stderr. Settings come from the
environment (see the README); options given on the command line win over them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pydantic
from redis.exceptions import RedisError

from loops_webhooks import operator_commands as operations
from loops_webhooks.embedded_redis import EmbeddedRedisError, ensure_embedded_redis
from loops_webhooks.event_loop import new_event_loop
from loops_webhooks.logs import configure_logging
from loops_webhooks.operator_commands import RedisUnreachable, UsageError
from loops_webhooks.settings import ConfigurationError, Settings
from loops_webhooks.workers.connection import check_redis_url
from loops_webhooks.workers.registry import HandlerLoadError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080

Command = Callable[[argparse.Namespace, Settings], int]


def redis_url_for(settings: Settings) -> str:
    """``REDIS_URL`` when set; otherwise the data directory's embedded development Redis."""
    if settings.redis_url:
        return check_redis_url(settings.redis_url)
    return ensure_embedded_redis(settings.data_dir)


def _worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    overrides = {
        name: value
        for name, value in (("handlers", args.handlers), ("worker_concurrency", args.concurrency))
        if value is not None
    }
    return settings.model_copy(update=overrides)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from loops_webhooks.ingest.app import create_app

    settings.require_webhook_secrets()
    app = create_app(settings, redis_url_for(settings))
    try:
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            loop=new_event_loop(),
        )
    except OSError as error:
        reason = error.strerror or str(error)
        raise operations.CommandFailed(
            f"cannot listen on {args.host}:{args.port}: {reason}"
        ) from None
    return EXIT_OK


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.workers.registry import load_router
    from loops_webhooks.workers.runner import build_worker

    settings = _worker_settings(args, settings)
    router = load_router(settings.handlers)
    asyncio.set_event_loop(new_event_loop())  # arq's Worker runs on the current loop
    try:
        build_worker(settings, redis_url_for(settings), router).run()
    except (RedisError, OSError) as error:
        raise RedisUnreachable(str(error)) from None
    return EXIT_OK


def dev(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.dev import run_dev
    from loops_webhooks.workers.registry import load_router

    settings = _worker_settings(args, settings)
    load_router(settings.handlers)
    worker_options = ["--handlers", settings.handlers]
    worker_options += ["--concurrency", str(settings.worker_concurrency)]
    return run_dev(
        redis_url=redis_url_for(settings),
        host=args.host,
        port=args.port,
        webhook_path=settings.webhook_path,
        secret_configured=bool(settings.webhook_secrets),
        worker_options=worker_options,
    )


def send(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.send import send_events

    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.id is not None and args.count > 1:
        raise UsageError("--id names one event; it cannot be combined with --count > 1")
    secret = args.secret.encode() if args.secret else None
    if secret is None:
        configured = settings.webhook_secrets
        if not configured:
            raise UsageError("no signing secret: pass --secret or set LOOPS_WEBHOOK_SECRET")
        secret = configured[0]
    url = args.url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}{settings.webhook_path}"
    data = _data_overrides(args.data)
    try:
        deliveries = asyncio.run(
            send_events(url, secret, args.type, count=args.count, event_id=args.id, data=data)
        )
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise operations.CommandFailed(f"cannot reach {url}: {reason}") from None
    accepted = sum(delivery.accepted for delivery in deliveries)
    if args.count == 1:
        print(f"{deliveries[0].status} {deliveries[0].body}")
    else:
        failures = [d for d in deliveries if not d.accepted]
        for failure in failures[:10]:
            print(f"{failure.event_id}: {failure.status} {failure.body}", file=sys.stderr)
        print(f"accepted {accepted} of {args.count} events")
    return EXIT_OK if accepted == args.count else EXIT_FAILURE


def stop_redis(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.embedded_redis import stop_embedded_redis

    if stop_embedded_redis(settings.data_dir):
        print(f"stopped the embedded Redis of {settings.data_dir.resolve()} (its data is kept)")
    else:
        print(f"no embedded Redis runs for {settings.data_dir.resolve()}")
    return EXIT_OK


def _data_overrides(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as error:
            raise UsageError(f"--data: cannot read {text[1:]}: {error.strerror}") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise UsageError(f"--data is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError("--data must be a JSON object (fields of the event's data)")
    return data


def _operation(operation: operations.Operation) -> Command:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return operations.run_operation(operation, redis_url_for(settings), args, settings)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loops-webhooks",
        description="Receive Loops webhooks and run your handlers for them, reliably. "
        "Configuration comes from LOOPS_* environment variables and REDIS_URL (see the "
        "README); without REDIS_URL an embedded development Redis is started in "
        "LOOPS_DATA_DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    def network_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", default=DEFAULT_HOST, help="address to bind (%(default)s)")
        sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")

    def worker_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--handlers",
            help="comma-separated module:attribute paths of Router objects "
            "(default: LOOPS_HANDLERS, else loops_webhooks.handlers.examples:router)",
        )
        sub.add_argument(
            "--concurrency",
            type=int,
            help="events processed at once (default: LOOPS_WORKER_CONCURRENCY, else 50)",
        )

    network_options(command("serve", serve, "Run the webhook receiver."))
    worker_options(
        command("worker", worker, "Run a worker: run the matching handlers for stored events.")
    )
    dev_parser = command(
        "dev", dev, "Run the receiver and a worker together, for development (Ctrl-C stops)."
    )
    network_options(dev_parser)
    worker_options(dev_parser)

    send_parser = command("send", send, "Sign a realistic test event as Loops does and POST it.")
    send_parser.add_argument("type", help="event type, e.g. checkout.session.completed")
    send_parser.add_argument(
        "--url", help=f"receiver URL (default http://{DEFAULT_HOST}:{DEFAULT_PORT}<path>)"
    )
    send_parser.add_argument("--secret", help="signing secret (default: LOOPS_WEBHOOK_SECRET)")
    send_parser.add_argument(
        "--data", help="JSON object (or @file) whose fields override the event's data"
    )
    send_parser.add_argument("--id", help="event id (default: a fresh evt_... id)")
    send_parser.add_argument("--count", type=int, default=1, help="distinct events to send")

    events_parser = commands.add_parser("events", help="Inspect stored events.")
    events_commands = events_parser.add_subparsers(dest="events_command", required=True)
    show = events_commands.add_parser(
        "show", help="One event's story: status and, per handler, outcome and attempts."
    )
    show.add_argument("event_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_operation(operations.show_event))

    dlq_parser = commands.add_parser("dlq", help="Inspect, replay and purge dead letters.")
    dlq_commands = dlq_parser.add_subparsers(dest="dlq_command", required=True)

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--type", help="only dead letters of this event type")
        sub.add_argument("--handler", help="only dead letters of this handler")
        sub.add_argument(
            "--since", type=operations.parse_since, help="ISO time or a duration ago (15m, 2d)"
        )

    dlq_list = dlq_commands.add_parser("list", help="Dead letters, newest first.")
    filters(dlq_list)
    dlq_list.add_argument("--limit", type=int, default=50, help="at most (%(default)s)")
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(run=_operation(operations.list_letters), ids=None)

    dlq_show = dlq_commands.add_parser("show", help="One dead letter, traceback and raw event.")
    dlq_show.add_argument("id")
    dlq_show.add_argument("--json", action="store_true", help="print JSON")
    dlq_show.set_defaults(run=_operation(operations.show_letter))

    replay = dlq_commands.add_parser(
        "replay",
        help="Put dead letters back on the queue with fresh attempts; handlers that already "
        "succeeded for the event are skipped unless --force.",
    )
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    replay.add_argument("--force", action="store_true", help="re-run succeeded handlers too")
    replay.set_defaults(run=_operation(operations.replay_letters))

    purge = dlq_commands.add_parser("purge", help="Delete dead letters for good.")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    filters(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=_operation(operations.purge_letters))

    command(
        "stop-redis",
        stop_redis,
        "Stop the embedded development Redis of LOOPS_DATA_DIR (its data stays on disk).",
    )
    stats = command("stats", _operation(operations.show_stats), "Queue and dead-letter figures.")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    return parser


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        print(f"loops-webhooks: invalid configuration: {problems}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_format, settings.log_level)
    command: Command = args.run
    try:
        return command(args, settings)
    except (ConfigurationError, UsageError) as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HandlerLoadError as error:
        print(f"loops-webhooks: cannot load handlers: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RedisUnreachable as error:
        where = _safe_url(settings.redis_url) if settings.redis_url else "the embedded Redis"
        print(f"loops-webhooks: cannot reach Redis at {where}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (EmbeddedRedisError, operations.CommandFailed) as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
