"""The receiver's deadline under a stalled Redis, and its memory under held request bodies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.faults.fault_harness import Harness, LoopsClient, event_plan
from tests.support.loops_sender import LoopsSender
from tests.support.resources import memory_mib

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
REDIS_TIMEOUT_SECONDS = 1.0
MARGIN_SECONDS = 0.5
"""What an answer may take beyond ``LOOPS_REDIS_TIMEOUT_SECONDS`` on a shared CI machine."""
STALL_SECONDS = 3
HELD_BODIES = 500
MEMORY_LIMIT_MIB = 256
"""The receiver's memory limit in deploy/k8s/receiver.yaml."""
AFTER_SECONDS = 3.0


def rss_mib(pid: int) -> float:
    return memory_mib(pid)["rss_mib"]


async def timed_answers(client: LoopsClient, sender: LoopsSender, prefix: str) -> list[tuple]:
    """One new event every 0.1 s for the stall's length: (answer, seconds) each."""

    async def one(index: int) -> tuple[str, float]:
        [send] = event_plan(sender, f"{prefix}{index}", 1)
        started = time.monotonic()
        answer, _ = await client.post_once(send.event_id, send.body)
        return answer, time.monotonic() - started

    tasks = []
    for index in range(STALL_SECONDS * 10):
        tasks.append(asyncio.create_task(one(index)))
        await asyncio.sleep(0.1)
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("stall", ["debug_sleep", "sigstop"])
async def test_under_a_stalled_redis_every_answer_comes_within_the_redis_timeout(
    tmp_path: Path, loops: LoopsSender, stall: str
) -> None:
    harness = Harness(tmp_path, loops, {"redis_timeout_seconds": str(REDIS_TIMEOUT_SECONDS)})
    try:
        await harness.start()
        async with aiohttp.ClientSession() as session:
            client = LoopsClient(session, harness.receiver_url, harness.sender)
            await client.stream(event_plan(harness.sender, "warm", 20), rate=50)
            stalled = harness.redis.stall(STALL_SECONDS, by=stall)
            await asyncio.sleep(0.05)
            answers = await timed_answers(client, harness.sender, stall)
            await asyncio.to_thread(stalled.wait)
    finally:
        harness.redis.resume()
        await harness.stop()

    slowest = max(seconds for _, seconds in answers)
    unavailable = [seconds for answer, seconds in answers if answer == "503"]
    print(
        f"[faults] {stall} {STALL_SECONDS}s, LOOPS_REDIS_TIMEOUT_SECONDS={REDIS_TIMEOUT_SECONDS}: "
        f"{len(unavailable)} of {len(answers)} answered 503, slowest 503 "
        f"{max(unavailable, default=0):.3f}s, slowest answer {slowest:.3f}s"
    )
    assert {answer for answer, _ in answers} <= {"200", "503"}
    assert unavailable, "the stall was not felt"
    assert slowest <= REDIS_TIMEOUT_SECONDS + MARGIN_SECONDS


async def hold_body(port: int, path: str, opened: asyncio.Event, release: asyncio.Event) -> None:
    """Open a connection, send headers for a 1 MiB body and all of it but the last byte,
    then hold it until ``release``."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"loops-signature: {'0' * 64}\r\nContent-Length: {MIB}\r\n\r\n".encode()
        )
        chunk = b"x" * (64 * 1024)
        sent = 0
        opened.set()
        while sent < MIB - 1 and not release.is_set():
            piece = chunk[: MIB - 1 - sent]
            writer.write(piece)
            sent += len(piece)
            drained = asyncio.ensure_future(writer.drain())
            stop = asyncio.ensure_future(release.wait())
            await asyncio.wait({drained, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not drained.done():
                drained.cancel()
                break
        await release.wait()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def test_held_bodies_stay_under_the_memory_limit_and_memory_is_returned_after(
    harness: Harness,
) -> None:
    assert harness.receiver is not None and harness.receiver.process is not None
    pid = harness.receiver.process.pid
    before = rss_mib(pid)
    release = asyncio.Event()
    opened = [asyncio.Event() for _ in range(HELD_BODIES)]
    path = harness.receiver_url.split(str(harness.receiver_port), 1)[1]
    holders = [
        asyncio.create_task(hold_body(harness.receiver_port, path, event, release))
        for event in opened
    ]
    peak = before
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.1)
    release.set()
    await asyncio.gather(*holders)
    await asyncio.sleep(AFTER_SECONDS)
    after = rss_mib(pid)
    print(
        f"[faults] {HELD_BODIES} held 1 MiB bodies: receiver RSS {before:.0f} MiB before, "
        f"peak {peak:.0f} MiB, {after:.0f} MiB {AFTER_SECONDS:g} s after they closed"
    )

    assert all(event.is_set() for event in opened)
    assert peak < MEMORY_LIMIT_MIB
    assert after - before < (peak - before) / 2, "most of the memory was not given back"
    async with aiohttp.ClientSession() as session:
        client = LoopsClient(session, harness.receiver_url, harness.sender)
        await client.stream(event_plan(harness.sender, "after", 10), rate=50)
        assert len(client.acknowledged) == 10


async def test_a_connection_whose_headers_never_complete_is_closed_after_the_read_timeout(
    tmp_path: Path, loops: LoopsSender
) -> None:
    harness = Harness(tmp_path, loops, {"read_timeout_seconds": "1"})
    try:
        await harness.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", harness.receiver_port)
        writer.write(b"POST /webhooks/loops HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = await asyncio.wait_for(reader.read(), timeout=10)
        waited = time.monotonic() - started
        writer.close()
    finally:
        await harness.stop()

    assert closed == b""
    assert 0.5 < waited < 3
