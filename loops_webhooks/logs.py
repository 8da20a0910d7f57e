"""Logging for every command: structlog, JSON lines off a terminal, a readable console on one.

Our own log lines go straight from structlog to stderr (no standard-library detour: one
canonical line per request is on the receiver's hot path); the standard library's loggers
(aiohttp, arq) are rendered by the same processors, so an operator reads one format.
Context is bound per request and per job with structlog's contextvars; every logger carries
its name as ``logger`` (``structlog.get_logger(logger_name="loops_webhooks.ingest")``).

The receiver's canonical request line is the one exception: ``CanonicalLine`` renders it with
one orjson call into the shape structlog renders, and the lines of one event-loop tick leave
in one write. Through structlog's processor chain the line took about a tenth of a request's
CPU under load.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson
import structlog

__all__ = ["CanonicalLine", "configure_logging"]

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
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


_timestamp = _Timestamp()


class _TickWriter:
    """Collects lines and writes those of one event-loop tick with one write.

    A line waits at most until the end of its tick; without a running loop it is written at
    once. What is still waiting when the process exits normally is written by ``atexit``.
    """

    __slots__ = ("_lines", "_stream")

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self._stream.write(line)
                self._stream.flush()
                return
        self._lines.append(line)

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self._stream.write(b"".join(lines))
            self._stream.flush()
        except (ValueError, OSError):  # closed (a test's captured stderr), or a broken pipe:
            pass  # nowhere to go, and a log line must never break a request


_fast_lines: _TickWriter | None = None
"""Set by ``configure_logging`` when lines are JSON and the level lets ``info`` through."""


@atexit.register
def _flush_at_exit() -> None:
    if _fast_lines is not None:
        _fast_lines.flush()


_json_renderer: structlog.typing.Processor | None = None
"""The renderer ``configure_logging`` put last in structlog's chain. While it is still last,
structlog would render what ``CanonicalLine`` writes; once structlog is configured otherwise
(``structlog.testing.capture_logs``, another ``configure``), lines go through structlog."""


def _as_configured() -> bool:
    processors = structlog.get_config()["processors"]
    return bool(processors) and processors[-1] is _json_renderer


class CanonicalLine:
    """``info`` lines of one logger on a hot path: one per request, fields given as a dict.

    With JSON logs the line is what structlog would write for
    ``structlog.get_logger(logger_name=name).info(event, **fields)``, the same keys in the
    same order, but none of the context bound with structlog's contextvars (the receiver
    binds none); in any other setup, or while structlog is configured otherwise, it is that
    very call.
    """

    __slots__ = ("_logger", "_name")

    def __init__(self, logger_name: str) -> None:
        self._name = logger_name
        self._logger = structlog.get_logger(logger_name=logger_name)

    def info(self, event: str, fields: dict[str, Any]) -> None:
        writer = _fast_lines
        if writer is None or not _as_configured():
            self._logger.info(event, **fields)
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = _timestamp.now()
        fields["logger"] = self._name
        writer.write(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE))


def _orjson_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(log_format: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog and the standard library once, at the edge (the CLI)."""
    render_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    level_number = logging.getLevelNamesMapping()[level.upper()]
    global _fast_lines, _json_renderer
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    if render_json:
        shared.append(structlog.processors.format_exc_info)
        ours: structlog.typing.Processor = structlog.processors.JSONRenderer(orjson.dumps)
        logger_factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
        foreign: structlog.typing.Processor = structlog.processors.JSONRenderer(_orjson_text)
        _fast_lines = _TickWriter(sys.stderr.buffer) if level_number <= logging.INFO else None
        _json_renderer = ours
    else:
        _fast_lines = _json_renderer = None
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
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # `dev` logs what changed
    if level_number > logging.DEBUG:
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
