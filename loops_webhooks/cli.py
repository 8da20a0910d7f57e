"""The ``loops-webhooks`` command: one entry point for the receiver, the workers and operators.

Exit codes: 0 success, 1 a runtime failure (Redis unreachable, event not found, ...), 2 bad
usage or configuration. Every failure is one line on stderr. Settings come from the
environment (see the README); options given on the command line win over them.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import structlog
from redis.exceptions import RedisError

from loops_webhooks import operator_commands
from loops_webhooks.embedded_redis import EmbeddedRedisError, ensure_embedded_redis
from loops_webhooks.event_loop import new_event_loop
from loops_webhooks.logs import LogFormat, configure_logging
from loops_webhooks.operator_commands import RedisUnreachable, UsageError
from loops_webhooks.redis_url import redacted_url
from loops_webhooks.settings import (
    ConfigurationError,
    Settings,
    effective_settings,
    read_settings,
)
from loops_webhooks.tracing import start_tracing
from loops_webhooks.workers.dead_letters import DeadLetterReason
from loops_webhooks.workers.registry import HandlerLoadError

if TYPE_CHECKING:
    from aiohttp import web

    from loops_webhooks.handlers import Router
    from loops_webhooks.workers.admission import HandlerFlow

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080

Command = Callable[[argparse.Namespace, Settings], int]

LONG_RUNNING = ("serve", "worker", "dashboard", "dev")
"""Commands that log their effective settings at info level once their checks passed (so a
failure to start is one line: its error), but not as children of ``dev``, which logged them
once for all; and a line when they listen and when they stop. The other commands log the
settings at debug."""

LETTER_OR_EVENT_IDS = "dead letter ids, or event ids (every dead letter of that event)"


def _log() -> structlog.typing.FilteringBoundLogger:
    """The CLI's logger, looked up when used: logging is configured in ``main``, per call."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(
        logger_name="loops_webhooks.cli"
    )
    return logger


def _log_settings(args: argparse.Namespace, settings: Settings) -> None:
    """A long-running command's settings line, logged once it is about to start: after
    every check that may stop it."""
    if not args.dev_child:
        _log().info("effective settings", settings=effective_settings(settings))


def _require_port(host: str, port: int, option: str) -> None:
    """Fail now, in one line naming ``option``, if ``host``:``port`` cannot be listened on
    (taken by another process, or no such address): before anything else binds a port or
    logs that it started. Bound with SO_REUSEADDR, as aiohttp binds, then closed."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise operator_commands.CommandFailed(_cannot_listen(host, port, error, option)) from None


def _cannot_listen(host: str, port: int, error: OSError, option: str) -> str:
    reason = error.strerror or str(error)
    return f"cannot listen on {host}:{port}: {reason} (choose another port with {option})"


def redis_url_for(settings: Settings) -> str:
    """``REDIS_URL`` when set; otherwise the data directory's embedded development Redis."""
    if settings.redis_url:
        return settings.redis_url
    return ensure_embedded_redis(settings.data_dir)


def _worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    overrides = {
        name: value
        for name, value in (("handlers", args.handlers), ("worker_concurrency", args.concurrency))
        if value is not None
    }
    return settings.model_copy(update=overrides)


def _load_handlers(args: argparse.Namespace, settings: Settings) -> Router:
    """The router of ``LOOPS_HANDLERS``/``--handlers``, imported with the project directory
    (``--app-dir``, default the current one) first on ``sys.path``, as uvicorn does, so a
    shop's own package is found without PYTHONPATH."""
    from loops_webhooks.workers.registry import load_router

    app_dir = str(Path(args.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        return load_router(settings.handlers)
    except HandlerLoadError as error:
        if error.while_importing is None and isinstance(error.__cause__, ModuleNotFoundError):
            raise HandlerLoadError(
                f"{error} (looked in {app_dir} and the installed packages: run from your "
                "project's directory or pass --app-dir)"
            ) from error.__cause__
        raise


def handlers(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.handlers.router import pattern_warnings

    settings = _worker_settings(args, settings)
    router = _load_handlers(args, settings)
    warnings = pattern_warnings(router)
    flows = _handler_flows(settings, [handler.name for handler in router.handlers], warnings)
    listed = [
        {
            "name": handler.name,
            "pattern": handler.pattern,
            "max_attempts": handler.max_attempts,
            "timeout_seconds": handler.timeout,
            "concurrency": handler.concurrency,
            "rate": None if handler.rate is None else str(handler.rate),
            "async": handler.is_async,
            "model": handler.event_model.__name__ if handler.event_model else None,
            "matches": handler.known_event_types,
            **_flow_json(flows, handler.name),
        }
        for handler in router.handlers
    ]
    if args.json:
        print(orjson.dumps({"handlers": listed, "warnings": warnings}).decode())
    else:
        for handler in router.handlers:
            attempts = handler.max_attempts or f"{settings.max_attempts} (default)"
            timeout = (
                f"{handler.timeout:g} s"
                if handler.timeout
                else f"{settings.handler_timeout_seconds:g} s (default)"
            )
            kind = "async" if handler.is_async else "def, in a thread"
            print(f"{handler.name}  pattern {handler.pattern!r}")
            print(f"  max_attempts {attempts}, timeout {timeout}, {kind}")
            limits = [f"concurrency {handler.concurrency}"] if handler.concurrency else []
            limits += [f"rate {handler.rate}"] if handler.rate else []
            if limits:
                print(f"  limits: {', '.join(limits)}")
            matched = ", ".join(handler.known_event_types) or "no known Loops event type"
            print(f"  matches: {matched}")
            if flows is not None:
                print(f"  {_flow_text(flows[handler.name])}")
        if not listed:
            print("no handlers registered")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _handler_flows(
    settings: Settings, names: list[str], warnings: list[str]
) -> dict[str, HandlerFlow] | None:
    """Whether each handler is paused and how many events wait for it, from ``REDIS_URL``
    or the embedded Redis if it runs (none is started); None, with a warning, if that Redis
    does not answer, and None without a warning when there is none to ask."""
    from loops_webhooks.embedded_redis import running_embedded_redis

    url = settings.redis_url or running_embedded_redis(settings.data_dir)
    if url is None:
        return None
    try:
        return operator_commands.read_handler_flows(url, settings, names)
    except RedisUnreachable as error:
        warnings.append(f"cannot read which handlers are paused from Redis: {error}")
        return None


def _flow_json(flows: dict[str, HandlerFlow] | None, name: str) -> dict[str, Any]:
    if flows is None:
        return {"paused": None, "waiting": None}
    flow = flows[name]
    paused = flow.paused
    return {
        "paused": None
        if paused is None
        else {"since": _iso(paused.since_ms), "reason": paused.reason, "by": paused.by},
        "waiting": flow.waiting,
    }


def _flow_text(flow: HandlerFlow) -> str:
    waiting = f"{flow.waiting} event{'' if flow.waiting == 1 else 's'} waiting"
    if flow.paused is None:
        return f"running; {waiting}"
    why = f": {flow.paused.reason}" if flow.paused.reason else ""
    return f"PAUSED since {_iso(flow.paused.since_ms)} by {flow.paused.by}{why}; {waiting}"


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def serve(args: argparse.Namespace, settings: Settings) -> int:

    from loops_webhooks.ingest.app import create_app
    from loops_webhooks.ingest.memory import keep_large_buffers_returnable

    settings.require_webhook_secrets()
    _require_port(args.host, args.port, "--port")
    _log_settings(args, settings)
    tracer = start_tracing("loops-webhooks-receiver")
    app = create_app(settings, redis_url_for(settings), tracer)
    keep_large_buffers_returnable()
    # aiohttp closes a connection whose request headers are not complete within its
    # keep-alive timeout (counted from the connection's start or its last response).
    _run_app(
        "receiver",
        app,
        args,
        path=settings.webhook_path,
        keepalive_timeout=settings.read_timeout_seconds,
    )
    return EXIT_OK


def _run_app(
    name: str, app: web.Application, args: argparse.Namespace, *, path: str, **options: Any
) -> None:
    """Serve ``app`` on ``--host``/``--port`` until SIGINT or SIGTERM, logging
    "``name`` listening" (its URL: ``path`` on that address), "``name`` stopping" (which
    signal) and "``name`` stopped". A port that cannot be bound is a one-line failure, not a
    traceback (nor a Redis error)."""
    from aiohttp import web

    loop = new_event_loop()

    def listening(_aiohttp_banner: str) -> None:
        _log().info(f"{name} listening", url=f"http://{args.host}:{args.port}{path}")

    def stopping(signum: signal.Signals) -> None:
        _log().info(f"{name} stopping", signal=signum.name)
        raise web.GracefulExit  # as aiohttp's own handler does; run_app then cleans up

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping, signum)
    try:
        web.run_app(app, host=args.host, port=args.port, access_log=None, print=listening,
                    handle_signals=False, loop=loop, **options)  # fmt: skip
    except OSError as error:
        raise operator_commands.CommandFailed(
            _cannot_listen(args.host, args.port, error, "--port")
        ) from None
    _log().info(f"{name} stopped")


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.handlers.router import pattern_warnings
    from loops_webhooks.workers.runner import build_worker

    settings = _worker_settings(args, settings)
    router = _load_handlers(args, settings)
    _log_settings(args, settings)
    for warning in pattern_warnings(router):
        _log().warning(warning)
    tracer = start_tracing("loops-webhooks-worker")
    asyncio.set_event_loop(new_event_loop())  # arq's Worker runs on the current loop
    try:
        build_worker(settings, redis_url_for(settings), router, tracer).run()
    except (RedisError, OSError) as error:
        raise RedisUnreachable(str(error)) from None
    _log().info("worker stopped")
    return EXIT_OK


def dev(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.dev import run_dev, watched_directories

    if settings.dashboard_token is not None:
        settings.require_dashboard_token()  # a short one stops dev here, not its dashboard
    settings = _worker_settings(args, settings)
    router = _load_handlers(args, settings)
    _require_port(args.host, args.port, "--port")
    _require_port(args.host, args.dashboard_port, "--dashboard-port")
    _log_settings(args, settings)
    project_dir = Path(args.app_dir).resolve()
    worker_options = ["--handlers", settings.handlers, "--app-dir", str(project_dir)]
    worker_options += ["--concurrency", str(settings.worker_concurrency)]
    return run_dev(
        redis_url=redis_url_for(settings),
        host=args.host,
        port=args.port,
        webhook_path=settings.webhook_path,
        secret_configured=bool(settings.webhook_secrets),
        data_dir=settings.data_dir,
        send_command=_own_command(),
        worker_options=worker_options,
        dashboard_port=args.dashboard_port,
        dashboard_token_configured=settings.dashboard_token is not None,
        log_format=_log_format(args, settings),
        child_command=[sys.executable, "-m", "loops_webhooks.cli", "--dev-child"],
        watched=watched_directories(project_dir, router),
    )


def _own_command() -> str:
    """How to run ``loops-webhooks`` from the current directory, as a user would paste it:
    the bare name when PATH finds this very installation, else the path of its script."""
    script = Path(sys.executable).parent / "loops-webhooks"
    found = shutil.which("loops-webhooks")
    if found is not None and Path(found).resolve() == script.resolve():
        return "loops-webhooks"
    try:
        relative = script.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(script))
    return shlex.quote(str(relative))


DASHBOARD_PORT = 8081


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(args: argparse.Namespace, settings: Settings) -> int:
    import structlog

    from loops_webhooks.dashboard.app import create_app

    if args.no_auth and not _is_loopback(args.host):
        raise UsageError(
            f"--no-auth is accepted on a loopback host only (127.0.0.1, ::1), not {args.host}"
        )
    token = None if args.no_auth else settings.require_dashboard_token()
    _require_port(args.host, args.port, "--port")
    _log_settings(args, settings)
    if args.no_auth:
        structlog.get_logger(logger_name="loops_webhooks.dashboard").warning(
            "dashboard without authentication (--no-auth): anyone on this machine can use it",
            host=args.host,
            port=args.port,
        )
    app = create_app(settings, redis_url_for(settings), token=token)
    _run_app("dashboard", app, args, path="/")
    return EXIT_OK


def _signing_secret(settings: Settings) -> str:
    """What ``send`` signs with unless ``--secret`` says: ``LOOPS_WEBHOOK_SECRET``, else the
    development secret ``dev`` keeps in the data directory (so a send to ``dev`` needs none)."""
    from loops_webhooks.dev_secret import dev_secret_file, kept_dev_secret

    configured = settings.webhook_secrets
    if configured:
        return configured[0].decode()
    secret_file = dev_secret_file(settings.data_dir)
    kept = kept_dev_secret(secret_file)
    if kept is None:
        raise UsageError(
            "no signing secret: LOOPS_WEBHOOK_SECRET is not set, and there is no development "
            f"secret in {secret_file} (LOOPS_DATA_DIR; `dev` keeps one there); pass --secret"
        )
    return kept


def send(args: argparse.Namespace, settings: Settings) -> int:
    from loops_webhooks.send import send_events

    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.id is not None and args.count > 1:
        raise UsageError("--id names one event; it cannot be combined with --count > 1")
    secret = args.secret or _signing_secret(settings)
    url = args.url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}{settings.webhook_path}"
    data = _data_overrides(args.data)
    try:
        deliveries = asyncio.run(
            send_events(url, secret, args.type, count=args.count, event_id=args.id, data=data)
        )
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise operator_commands.CommandFailed(f"cannot reach {url}: {reason}") from None
    accepted = sum(delivery.accepted for delivery in deliveries)
    if args.json:
        sent = [
            {"id": d.event_id, "status": d.status, "accepted": d.accepted, "response": d.body}
            for d in deliveries
        ]
        print(orjson.dumps({"sent": sent, "accepted": accepted}).decode())
    else:
        for delivery in deliveries:
            print(f"{delivery.event_id} {delivery.status} {delivery.body}")
        if args.count > 1:
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


def _operator_command(command: operator_commands.OperatorCommand) -> Command:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return operator_commands.run_operator_command(
            command, redis_url_for(settings), args, settings
        )

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loops-webhooks",
        description="Receive Loops webhooks and run your handlers for them, reliably. "
        "Configuration comes from LOOPS_* environment variables and REDIS_URL (see the "
        "README); without REDIS_URL an embedded development Redis is started in "
        "LOOPS_DATA_DIR. serve and worker send traces when the standard OTEL_* variables ask "
        "for them (install loops-webhooks[otel]).",
    )
    # How ``dev`` starts its children: they leave the settings line to ``dev``.
    parser.add_argument("--dev-child", action="store_true", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    def network_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", default=DEFAULT_HOST, help="address to bind (%(default)s)")
        sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")

    def handlers_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--handlers",
            help="comma-separated module:attribute paths of Router objects "
            "(default: LOOPS_HANDLERS, else loops_webhooks.handlers.examples:router)",
        )
        sub.add_argument(
            "--app-dir",
            default=".",
            help="directory put first on the import path, where your handlers package is "
            "(default: the current directory)",
        )

    def worker_options(sub: argparse.ArgumentParser) -> None:
        handlers_options(sub)
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
        "dev",
        dev,
        "Run the receiver, a worker and the dashboard together, for development; the worker "
        "restarts when a Python file under --app-dir changes (Ctrl-C stops).",
    )
    network_options(dev_parser)
    worker_options(dev_parser)
    dev_parser.add_argument(
        "--dashboard-port",
        type=int,
        default=DASHBOARD_PORT,
        help="the dashboard's port (%(default)s)",
    )

    handlers_parser = command(
        "handlers",
        handlers,
        "List the registered handlers, their limits and the Loops event types each matches; "
        "warns about patterns that match no known type. Whether each is paused and how many "
        "events wait for it are read from REDIS_URL or a running embedded Redis (none is "
        "started). `handlers pause|resume NAME` pause and resume a handler.",
    )
    handlers_options(handlers_parser)
    handlers_parser.add_argument("--json", action="store_true", help="print JSON")
    handlers_parser.set_defaults(concurrency=None)
    handler_controls = handlers_parser.add_subparsers(dest="handlers_command", metavar="ACTION")
    pause = handler_controls.add_parser(
        "pause",
        help="Pause a handler on every worker: its events wait, using no attempt and "
        "dead-lettering nothing, until it is resumed; the event's other handlers run.",
    )
    pause.add_argument("name", help="the handler's name, as `handlers` lists it")
    pause.add_argument("--reason", help="why, shown by `handlers` and the dashboard")
    pause.add_argument(
        "--force",
        action="store_true",
        help="pause a name that no running worker has registered",
    )
    pause.set_defaults(run=_operator_command(operator_commands.pause_handler))
    resume = handler_controls.add_parser(
        "resume", help="Resume a paused handler: what waited for it runs, oldest first."
    )
    resume.add_argument("name")
    resume.set_defaults(run=_operator_command(operator_commands.resume_handler))

    send_parser = command("send", send, "Sign a realistic test event as Loops does and POST it.")
    send_parser.add_argument("type", help="event type, e.g. checkout.session.completed")
    send_parser.add_argument(
        "--url", help=f"receiver URL (default http://{DEFAULT_HOST}:{DEFAULT_PORT}<path>)"
    )
    send_parser.add_argument(
        "--secret",
        help="signing secret (default: LOOPS_WEBHOOK_SECRET, else the development secret "
        "that dev keeps in LOOPS_DATA_DIR)",
    )
    send_parser.add_argument(
        "--data", help="JSON object (or @file) whose fields override the event's data"
    )
    send_parser.add_argument("--id", help="event id (default: a fresh evt_... id)")
    send_parser.add_argument("--count", type=int, default=1, help="distinct events to send")
    send_parser.add_argument("--json", action="store_true", help="print JSON")

    def search_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--session", help="of this checkout session id (data.id)")
        sub.add_argument("--customer", help="of this customer (data.externalCustomerId)")
        sub.add_argument(
            "--metadata",
            action="append",
            type=operator_commands.parse_metadata,
            default=[],
            metavar="KEY=VALUE",
            help="whose data.metadata holds KEY=VALUE (repeatable; KEY one of "
            "LOOPS_SEARCH_METADATA_KEYS)",
        )

    events_parser = commands.add_parser("events", help="Inspect stored events.")
    events_commands = events_parser.add_subparsers(dest="events_command", required=True)
    show = events_commands.add_parser(
        "show", help="One event's story: status and, per handler, outcome and attempts."
    )
    show.add_argument("event_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_operator_command(operator_commands.show_event))
    events_list = events_commands.add_parser("list", help="Stored events, newest first.")
    events_list.add_argument("--type", help="only events of this type")
    events_list.add_argument(
        "--status", choices=["pending", "done", "dead"], help="only events with this status"
    )
    events_list.add_argument(
        "--since",
        type=operator_commands.parse_since,
        help="received since: ISO time or 15m, 2d, ...",
    )
    search_options(events_list)
    events_list.add_argument("--limit", type=int, default=50, help="at most (%(default)s)")
    events_list.add_argument(
        "--cursor", help="the next page: the cursor the previous page printed (stderr)"
    )
    events_list.add_argument("--json", action="store_true", help="print JSON")
    events_list.set_defaults(run=_operator_command(operator_commands.list_events))
    erase = events_commands.add_parser(
        "erase",
        help="Erase a customer's personal data: the raw bodies and kept headers of their "
        "finished events and dead letters, and their search entries (ids, types, times and "
        "outcomes stay, marked erased). Asks unless --yes.",
    )
    erase.add_argument("--customer", required=True, help="the customer (data.externalCustomerId)")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.set_defaults(run=_operator_command(operator_commands.erase_customer))
    retry = events_commands.add_parser(
        "retry-now",
        help="Run the event's scheduled retries now, without waiting for their backoff "
        "(the service behind the handler is back).",
    )
    retry.add_argument("event_id")
    retry.set_defaults(run=_operator_command(operator_commands.retry_now))

    dlq_parser = commands.add_parser("dlq", help="Inspect, replay and purge dead letters.")
    dlq_commands = dlq_parser.add_subparsers(dest="dlq_command", required=True)

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--type", help="only dead letters of this event type")
        sub.add_argument("--handler", help="only dead letters of this handler")
        sub.add_argument(
            "--reason",
            choices=[reason.value for reason in DeadLetterReason],
            help="only dead letters of this reason",
        )
        sub.add_argument(
            "--since",
            type=operator_commands.parse_since,
            help="ISO time or a duration ago (15m, 2d)",
        )
        search_options(sub)

    dlq_list = dlq_commands.add_parser("list", help="Dead letters, newest first.")
    filters(dlq_list)
    dlq_list.add_argument("--limit", type=int, default=50, help="at most (%(default)s)")
    dlq_list.add_argument(
        "--cursor", help="the next page: the cursor the previous page printed (stderr)"
    )
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(run=_operator_command(operator_commands.list_letters), ids=None)

    dlq_show = dlq_commands.add_parser(
        "show",
        help="One dead letter, traceback and raw event; given an event id, that event's letters.",
    )
    dlq_show.add_argument("id", help="a dead letter id, or an event id (its letters)")
    dlq_show.add_argument("--json", action="store_true", help="print JSON")
    dlq_show.set_defaults(run=_operator_command(operator_commands.show_letter))

    replay = dlq_commands.add_parser(
        "replay",
        help="Put dead letters back on the queue with fresh attempts; handlers that already "
        "succeeded for the event are skipped unless --force.",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help=LETTER_OR_EVENT_IDS)
    replay.add_argument("--all", action="store_true", help="every dead letter")
    filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    replay.add_argument("--force", action="store_true", help="re-run succeeded handlers too")
    replay.set_defaults(run=_operator_command(operator_commands.replay_letters))

    purge = dlq_commands.add_parser("purge", help="Delete dead letters for good.")
    purge.add_argument("ids", nargs="*", metavar="ID", help=LETTER_OR_EVENT_IDS)
    purge.add_argument("--all", action="store_true", help="every dead letter")
    filters(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=_operator_command(operator_commands.purge_letters))

    command(
        "stop-redis",
        stop_redis,
        "Stop the embedded development Redis of LOOPS_DATA_DIR (its data stays on disk).",
    )
    dashboard_parser = command(
        "dashboard",
        dashboard,
        "Run the dashboard: a web page and JSON API for events and dead letters, behind "
        "LOOPS_DASHBOARD_TOKEN (at least 32 characters), on its own port.",
    )
    dashboard_parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (%(default)s)"
    )
    dashboard_parser.add_argument(
        "--port", type=int, default=DASHBOARD_PORT, help="port (%(default)s)"
    )
    dashboard_parser.add_argument(
        "--no-auth",
        action="store_true",
        help="no token (a loopback --host only; logs a warning)",
    )

    command(
        "reindex",
        _operator_command(operator_commands.reindex),
        "Make events stored before search existed findable by session, customer and "
        "LOOPS_SEARCH_METADATA_KEYS; safe to interrupt and run again (it passes over what is "
        "done).",
    )
    stats = command(
        "stats", _operator_command(operator_commands.show_stats), "Queue and dead-letter figures."
    )
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    return parser


def _log_format(args: argparse.Namespace, settings: Settings) -> LogFormat:
    """``LOOPS_LOG_FORMAT``; unset, ``dev`` and its children log for a person, on the console."""
    if args.command == "dev" and "log_format" not in settings.model_fields_set:
        return "console"
    return settings.log_format


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings, unread = read_settings()
    except ConfigurationError as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(_log_format(args, settings), settings.log_level)
    log = _log()
    if args.command not in LONG_RUNNING:
        log.debug("effective settings", settings=effective_settings(settings))
    if unread:
        log.debug("LOOPS_ variables that no setting reads, left to your code", names=unread)
    command: Command = args.run
    try:
        return command(args, settings)
    except (ConfigurationError, UsageError) as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HandlerLoadError as error:
        if error.while_importing is not None:
            sys.stderr.write("".join(traceback.format_exception(error.while_importing)))
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RedisUnreachable as error:
        where = redacted_url(settings.redis_url) if settings.redis_url else "the embedded Redis"
        print(f"loops-webhooks: cannot reach Redis at {where}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (EmbeddedRedisError, operator_commands.CommandFailed) as error:
        print(f"loops-webhooks: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
