"""Logging for every command: structlog, JSON lines off a terminal, a readable console on one.

Our own log lines go straight from structlog to stderr (no standard-library detour: one
canonical line per request is on the receiver's hot path); the standard library's loggers
(aiohttp, arq) are rendered by the same processors, so an operator reads one format.
Context is bound per request and per job with structlog's contextvars; every logger carries
its name as ``logger`` (``structlog.get_logger(logger_name="loops_webhooks.ingest")``).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog

__all__ = ["configure_logging"]

LogFormat = Literal["auto", "json", "console"]


def _name_the_logger(
    logger: Any, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """``logger_name`` bound at ``get_logger`` becomes ``logger``, as for stdlib records."""
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


class _Timestamp:
    """``timestamp``: ISO 8601 in UTC with microseconds, e.g. ``2026-12-02T03:38:00.123456Z``.

    The date and time of day are formatted once per second, not per line: structlog's
    ``TimeStamper(fmt="iso")`` formats a datetime for every line, a measurable share of the
    receiver's canonical request line.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def _orjson_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(log_format: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog and the standard library once, at the edge (the CLI)."""
    render_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    level_number = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Timestamp(),
    ]
    if render_json:
        shared.append(structlog.processors.format_exc_info)
        ours: structlog.typing.Processor = structlog.processors.JSONRenderer(orjson.dumps)
        logger_factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
        foreign: structlog.typing.Processor = structlog.processors.JSONRenderer(_orjson_text)
    else:
        ours = foreign = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, _name_the_logger, ours],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, foreign],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if level_number > logging.DEBUG:
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
