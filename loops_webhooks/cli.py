"""The ``loops-webhooks`` command: one entry point for the receiver, the workers and operators.

Exit codes: 0 success, 1 a runtime failure (Redis unreachable, ...), 2 bad usage or
configuration. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import pydantic
from aiohttp import web
from redis.exceptions import RedisError

from loops_webhooks.embedded_redis import EmbeddedRedisError, ensure_embedded_redis
from loops_webhooks.logs import configure_logging
from loops_webhooks.settings import ConfigurationError, Settings
from workers.registry import HandlerLoadError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, Settings], int]


def redis_url_for(settings: Settings) -> str:
    """``REDIS_URL`` when set; otherwise the data directory's embedded development Redis."""
    if settings.redis_url:
        return settings.redis_url
    return ensure_embedded_redis(settings.data_dir)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.app import create_app

    app = create_app(settings, redis_url_for(settings))
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return EXIT_OK


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.registry import load_router
    from workers.runner import build_worker

    overrides = {
        name: value
        for name, value in (("handlers", args.handlers), ("worker_concurrency", args.concurrency))
        if value is not None
    }
    settings = settings.model_copy(update=overrides)
    router = load_router(settings.handlers)
    build_worker(settings, redis_url_for(settings), router).run()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loops-webhooks",
        description="Receive Loops webhooks and run your handlers for them, reliably. "
        "Configuration comes from LOOPS_* environment variables and REDIS_URL "
        "(see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser(
        "serve", help="run the webhook receiver", description="Run the webhook receiver."
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    serve_parser.add_argument("--port", type=int, default=8080, help="port to bind (%(default)s)")
    serve_parser.set_defaults(run=serve)

    worker_parser = commands.add_parser(
        "worker",
        help="run a worker that runs your handlers for stored events",
        description="Run a worker: take events off the queue and run the matching handlers, "
        "with retries and dead-lettering.",
    )
    worker_parser.add_argument(
        "--handlers",
        help="comma-separated module:attribute paths of Router objects "
        "(default: LOOPS_HANDLERS, else handlers.examples:router)",
    )
    worker_parser.add_argument(
        "--concurrency",
        type=int,
        help="handlers' events run at once (default: LOOPS_WORKER_CONCURRENCY, else 20)",
    )
    worker_parser.set_defaults(run=worker)
    return parser


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
    except ConfigurationError as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HandlerLoadError as error:
        print(f"loops-webhooks: cannot load handlers: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (EmbeddedRedisError, RedisError, OSError) as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
