"""Logging setup: JSON lines off a terminal, the standard library's loggers rendered the same."""

from __future__ import annotations

import subprocess
import sys

import orjson

PROGRAM = """
import logging, structlog
from loops_webhooks.logs import configure_logging
configure_logging("{fmt}", "info")
structlog.get_logger("ingest").info("from structlog", event_id="evt_1")
logging.getLogger("aiohttp.server").error("from the standard library")
logging.getLogger("arq.worker").info("arq chatter hidden at info")
"""


def run_with_format(log_format: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(fmt=log_format)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stderr.strip().splitlines()


def test_json_format_renders_structlog_and_standard_library_logs_as_json_lines() -> None:
    lines = [orjson.loads(line) for line in run_with_format("json")]

    assert [line["event"] for line in lines] == ["from structlog", "from the standard library"]
    assert lines[0]["event_id"] == "evt_1"
    assert lines[0]["level"] == "info"
    assert lines[1]["logger"] == "aiohttp.server"
    assert lines[1]["level"] == "error"
    assert all("timestamp" in line for line in lines)


def test_auto_format_writes_json_when_stderr_is_not_a_terminal() -> None:
    lines = run_with_format("auto")

    assert orjson.loads(lines[0])["event"] == "from structlog"


def test_console_format_is_not_json() -> None:
    lines = run_with_format("console")

    assert "from structlog" in lines[0]
    assert not lines[0].startswith("{")


CANONICAL_PROGRAM = """
import asyncio, structlog
from loops_webhooks.logs import CanonicalLine, configure_logging
configure_logging("{fmt}", "{level}")
fields = {{"method": "POST", "status": 200, "duration_ms": 0.12, "event_id": "evt_1"}}
structlog.get_logger(logger_name="loops_webhooks.ingest").info("request", **fields)
async def main():
    line = CanonicalLine("loops_webhooks.ingest")
    line.info("request", dict(fields))
    line.info("request", dict(fields, event_id="evt_2"))
asyncio.run(main())
"""


def run_canonical(log_format: str, level: str = "info") -> list[str]:
    program = CANONICAL_PROGRAM.format(fmt=log_format, level=level)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    return result.stderr.strip().splitlines()


def test_the_canonical_line_is_the_line_structlog_writes_with_the_same_keys_in_order() -> None:
    from_structlog, *canonical = [orjson.loads(line) for line in run_canonical("json")]

    assert len(canonical) == 2
    for line in canonical:
        assert list(line) == list(from_structlog)
        assert {k: v for k, v in line.items() if k not in ("timestamp", "event_id")} == {
            k: v for k, v in from_structlog.items() if k not in ("timestamp", "event_id")
        }
    assert [line["event_id"] for line in canonical] == ["evt_1", "evt_2"]


def test_the_canonical_line_is_dropped_below_its_level_and_rendered_by_structlog_on_console():
    assert run_canonical("json", level="warning") == []
    console = run_canonical("console")
    assert len(console) == 3
    assert all("request" in line and not line.startswith("{") for line in console)


def test_lines_written_outside_an_event_loop_leave_at_once() -> None:
    import io

    from loops_webhooks.logs import _TickWriter

    stream = io.BytesIO()
    _TickWriter(stream).write(b'{"event":"request"}\n')

    assert stream.getvalue() == b'{"event":"request"}\n'


def test_a_broken_pipe_drops_the_tick_s_lines_instead_of_raising() -> None:
    import asyncio
    import io

    from loops_webhooks.logs import _TickWriter

    class BrokenPipe(io.BytesIO):
        def write(self, data: object) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    async def two_ticks() -> None:
        writer = _TickWriter(BrokenPipe())
        writer.write(b"line\n")
        await asyncio.sleep(0)  # the tick's flush runs, and must not raise
        writer.write(b"next\n")  # a later tick still schedules its own flush
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        loop.run_until_complete(two_ticks())
    finally:
        loop.close()
    assert errors == []
