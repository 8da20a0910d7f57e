"""The receiver over real HTTP on loopback, against a real Redis: its whole HTTP contract."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from arq.jobs import deserialize_job_raw
from redis.asyncio import Redis

from loops_webhooks.settings import MIB
from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import PROCESS_EVENT_JOB

WEBHOOK_PATH = "/webhooks/loops"
QUEUE = "loops:queue"


@pytest.fixture
async def receiver(start_receiver, redis_url: str) -> TestClient:
    return await start_receiver(redis_url)


async def post_event(client: TestClient, loops, body: bytes) -> aiohttp.ClientResponse:
    response = await client.post(WEBHOOK_PATH, data=body, headers=loops.headers(body))
    await response.read()
    return response


async def redis_contents(redis: Redis) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    return {key: await redis.dump(key) async for key in redis.scan_iter()}


async def queued_job_ids(redis: Redis) -> list[str]:
    return [member.decode() for member in await redis.zrange(QUEUE, 0, -1)]


async def queued_event_id(redis: Redis, event_id: str) -> str:
    """The event id carried by the arq job enqueued for ``event_id``, decoded as arq's worker
    would with a JSON deserializer."""
    payload = await redis.get(keys.arq_job_key(keys.job_id_for_event(event_id)))
    assert payload is not None, f"no job payload for {event_id}"
    function, args, _kwargs, _try, _enqueued = deserialize_job_raw(
        payload, deserializer=orjson.loads
    )
    assert function == PROCESS_EVENT_JOB
    return str(args[0])


def event_padded_to(loops, size: int) -> bytes:
    """A valid event whose body is exactly ``size`` bytes."""
    without_padding = len(orjson.dumps({**orjson.loads(loops.event("evt_sized")), "pad": ""}))
    document = {**orjson.loads(loops.event("evt_sized")), "pad": "x" * (size - without_padding)}
    body = orjson.dumps(document)
    assert len(body) == size
    return body


async def test_a_signed_event_is_answered_received_and_not_duplicate(receiver, loops):
    response = await post_event(receiver, loops, loops.event("evt_1"))

    assert response.status == 200
    assert await response.json() == {"received": True, "id": "evt_1", "duplicate": False}


async def test_a_signed_event_is_stored_as_its_exact_raw_bytes(receiver, loops, redis):
    body = (
        b'{ "type" : "checkout.session.completed",\n  "id":"evt_raw",'
        b' "data": {"amount": 1.50, "note": "caf\\u00e9 \xc3\xa9", "n": 1e2} }\n'
    )
    before = int(time.time() * 1000)

    response = await post_event(receiver, loops, body)

    assert response.status == 200
    stored = await redis.hgetall(keys.event_key("evt_raw"))
    assert stored[b"raw"] == body
    assert stored[b"type"] == b"checkout.session.completed"
    assert stored[b"status"] == b"pending"
    assert before <= int(stored[b"received_at"]) <= int(time.time() * 1000)
    assert orjson.loads(stored[b"headers"])["loops-signature"] == loops.signature(body)


async def test_a_signed_event_is_enqueued_as_one_json_job_carrying_its_id(receiver, loops, redis):
    await post_event(receiver, loops, loops.event("evt_job"))

    assert await queued_job_ids(redis) == [keys.job_id_for_event("evt_job")]
    payload = await redis.get(keys.arq_job_key(keys.job_id_for_event("evt_job")))
    assert orjson.loads(payload)["a"][0] == "evt_job"
    assert await queued_event_id(redis, "evt_job") == "evt_job"


async def test_a_repeated_event_id_is_answered_duplicate_and_writes_nothing(receiver, loops, redis):
    await post_event(receiver, loops, loops.event("evt_twice"))
    before = await redis_contents(redis)

    response = await post_event(
        receiver, loops, loops.event("evt_twice", "checkout.session.failed")
    )

    assert response.status == 200
    assert await response.json() == {"received": True, "id": "evt_twice", "duplicate": True}
    assert await redis_contents(redis) == before


async def test_a_body_of_exactly_the_limit_is_accepted(receiver, loops, redis):
    response = await post_event(receiver, loops, event_padded_to(loops, MIB))

    assert response.status == 200
    assert len(await redis.hget(keys.event_key("evt_sized"), "raw")) == MIB


async def test_a_body_over_the_limit_with_content_length_is_refused_413(receiver, loops, redis):
    body = event_padded_to(loops, MIB + 1)

    response = await post_event(receiver, loops, body)

    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert await redis.dbsize() == 0


async def test_a_chunked_body_over_the_limit_is_refused_413(receiver, loops, redis):
    body = event_padded_to(loops, MIB + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = await receiver.post(WEBHOOK_PATH, data=chunks(), headers=loops.headers(body))

    assert "Content-Length" not in response.request_info.headers
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert await redis.dbsize() == 0


async def exchange(client: TestClient, request_head: bytes, body_part: bytes) -> bytes:
    """Send a request head and part of a body on a raw connection, leave the request
    unfinished, and return the status line the server answers with."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request_head + body_part)
        return await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_arrives(
    receiver, loops, redis
):
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * MIB}\r\n"
        f"loops-signature: {loops.signature(b'')}\r\n\r\n"
    ).encode()

    status_line = await exchange(receiver, head, b'{"id": "evt_huge", ')

    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert await redis.dbsize() == 0


def request_head(loops, content_length: int, extra: str = "") -> bytes:
    """A signed POST's head declaring ``content_length``, for requests written by hand."""
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n"
        f"loops-signature: {loops.signature(b'')}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("declared", [100 * MIB, MIB + 1])
async def test_an_oversized_body_expecting_100_continue_gets_413_and_never_100_continue(
    receiver, loops, redis, declared
):
    head = request_head(loops, declared, "Expect: 100-continue\r\n")

    status_line = await exchange(receiver, head, b"")

    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert await redis.dbsize() == 0


async def test_a_body_within_the_limit_expecting_100_continue_is_invited_and_accepted(
    receiver, loops
):
    body = loops.event()
    response = await receiver.post(
        WEBHOOK_PATH, data=body, headers={**loops.headers(body), "Expect": "100-continue"}
    )
    assert response.status == 200


async def test_a_body_that_stops_arriving_gets_408_after_the_read_timeout(
    start_receiver, redis_url, loops, redis
):
    client = await start_receiver(redis_url, read_timeout_seconds=0.5)
    head = request_head(loops, 1000)

    started = time.monotonic()
    status_line = await exchange(client, head, b'{"id": "evt_slow", ')

    assert status_line.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < time.monotonic() - started < 2
    assert await redis.dbsize() == 0


async def test_requests_beyond_the_body_slots_wait_and_get_503_busy_after_the_read_timeout(
    start_receiver, redis_url, loops
):
    client = await start_receiver(redis_url, read_timeout_seconds=0.5, max_concurrent_bodies=1)
    head = request_head(loops, 1000)

    holding = asyncio.create_task(exchange(client, head, b"{"))
    await asyncio.sleep(0.05)
    next_in_line = asyncio.create_task(exchange(client, head, b"{"))
    await asyncio.sleep(0.05)
    behind_both = await exchange(client, head, b"{")

    assert behind_both.startswith(b"HTTP/1.1 503 ")
    assert (await holding).startswith(b"HTTP/1.1 408 ")
    assert (await next_in_line).startswith(b"HTTP/1.1 408 ")


async def test_a_chunked_body_is_refused_once_it_passes_the_limit_without_waiting_for_its_end(
    receiver, loops, redis
):
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        f"loops-signature: {loops.signature(b'')}\r\n\r\n"
    ).encode()
    chunk = b"x" * (64 * 1024)
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MIB // len(chunk) + 1)

    status_line = await exchange(receiver, head, chunks)

    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert await redis.dbsize() == 0


UNUSABLE_BODIES = {
    "empty": b"",
    "not JSON": b"id=evt_1&type=checkout.session.completed",
    "truncated JSON": b'{"id": "evt_1", "type": "checkout.se',
    "a JSON array": b'[{"id": "evt_1", "type": "checkout.session.completed"}]',
    "a JSON string": b'"evt_1"',
    "no id": b'{"type": "checkout.session.completed"}',
    "a numeric id": b'{"id": 1, "type": "checkout.session.completed"}',
    "an empty id": b'{"id": "", "type": "checkout.session.completed"}',
    "no type": b'{"id": "evt_1"}',
    "a null type": b'{"id": "evt_1", "type": null}',
}


@pytest.mark.parametrize("body", UNUSABLE_BODIES.values(), ids=UNUSABLE_BODIES.keys())
async def test_a_signed_unusable_body_is_refused_400_invalid_payload(receiver, loops, body):
    response = await post_event(receiver, loops, body)

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_payload"


@pytest.mark.parametrize("body", UNUSABLE_BODIES.values(), ids=UNUSABLE_BODIES.keys())
async def test_a_signed_unusable_body_is_kept_raw_as_a_dead_letter_and_not_enqueued(
    receiver, loops, redis, body
):
    await post_event(receiver, loops, body)

    [dead_letter_id] = await redis.zrange(keys.DEAD_LETTER_INDEX, 0, -1)
    dead_letter = await redis.hgetall(keys.dead_letter_key(dead_letter_id.decode()))
    assert dead_letter[b"raw"] == body
    assert dead_letter[b"reason"] == b"invalid_payload"
    assert await redis.exists(QUEUE) == 0


async def test_the_same_unusable_body_twice_is_dead_lettered_once(receiver, loops, redis):
    body = b"not json at all"
    await post_event(receiver, loops, body)
    before = await redis_contents(redis)

    response = await post_event(receiver, loops, body)

    assert response.status == 400
    assert await redis_contents(redis) == before
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 1


def _signed_with_another_secret(body: bytes) -> dict[str, str]:
    return {"loops-signature": hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()}


BAD_SIGNATURES: dict[str, Callable[[Any, bytes], dict[str, str]]] = {
    "missing": lambda loops, body: {},
    "another secret": lambda loops, body: _signed_with_another_secret(body),
    "another body": lambda loops, body: loops.headers(body + b" "),
    "not hex": lambda loops, body: {"loops-signature": "z" * 64},
}


@pytest.mark.parametrize("headers_for", BAD_SIGNATURES.values(), ids=BAD_SIGNATURES.keys())
async def test_a_badly_signed_event_is_refused_401_and_not_stored(
    receiver, loops, redis, headers_for
):
    body = loops.event()

    response = await receiver.post(WEBHOOK_PATH, data=body, headers=headers_for(loops, body))

    assert response.status == 401
    assert (await response.json())["error"] == "invalid_signature"
    assert await redis.dbsize() == 0


async def test_an_unsigned_unusable_body_is_refused_401_and_not_dead_lettered(receiver, redis):
    response = await receiver.post(WEBHOOK_PATH, data=b"not json")

    assert response.status == 401
    assert await redis.dbsize() == 0


async def test_a_get_on_the_webhook_path_is_refused_405_in_json(receiver):
    response = await receiver.get(WEBHOOK_PATH)

    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"] == "method_not_allowed"


async def test_an_unknown_path_is_answered_404_in_json(receiver):
    response = await receiver.post("/webhooks/elsewhere", data=b"{}")

    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_a_path_holding_an_encoded_newline_is_answered_404_in_json(receiver):
    response = await receiver.get("/webhooks%0Aloops")

    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_a_post_on_the_health_path_is_refused_405_naming_get_and_head(receiver):
    response = await receiver.post("/healthz")

    assert response.status == 405
    assert response.headers["Allow"] == "GET,HEAD"
    assert (await receiver.head("/healthz")).status == 200


@pytest.mark.parametrize("stop", ["kill", "shutdown"])
async def test_while_redis_is_down_events_get_503_and_after_it_is_back_200(
    start_receiver, stoppable_redis, loops, stop
):
    receiver = await start_receiver(stoppable_redis.url)
    assert (await post_event(receiver, loops, loops.event("evt_before"))).status == 200
    body = loops.event("evt_outage")
    getattr(stoppable_redis, stop)()

    during_outage = [await post_event(receiver, loops, body) for _ in range(3)]

    assert [response.status for response in during_outage] == [503, 503, 503]
    assert all(response.headers["Retry-After"].isdigit() for response in during_outage)
    assert (await during_outage[0].json())["error"] == "unavailable"

    stoppable_redis.start()
    after = await post_event(receiver, loops, body)

    assert after.status == 200
    assert await after.json() == {"received": True, "id": "evt_outage", "duplicate": False}
    async with Redis.from_url(stoppable_redis.url) as redis:
        assert await redis.hget(keys.event_key("evt_outage"), "raw") == body
        assert await queued_event_id(redis, "evt_outage") == "evt_outage"


async def test_a_redis_that_does_not_answer_gets_503_within_the_timeout(
    start_receiver, stoppable_redis, loops
):
    receiver = await start_receiver(stoppable_redis.url, redis_timeout_seconds=0.5)
    stoppable_redis.pause()
    started = time.monotonic()

    response = await post_event(receiver, loops, loops.event())

    assert response.status == 503
    assert "Retry-After" in response.headers
    assert time.monotonic() - started < 2.0


async def test_two_hundred_concurrent_events_are_each_stored_once_with_one_job(
    receiver, loops, redis
):
    distinct = [loops.event(f"evt_{n:03d}") for n in range(160)]
    repeats = distinct[:40]
    url = receiver.make_url(WEBHOOK_PATH)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: bytes) -> dict[str, Any]:
            async with session.post(url, data=body, headers=loops.headers(body)) as response:
                assert response.status == 200
                answer: dict[str, Any] = await response.json()
                return answer

        answers = await asyncio.gather(*(send(body) for body in distinct + repeats))

    first_receipts = sorted(answer["id"] for answer in answers if not answer["duplicate"])
    assert first_receipts == [f"evt_{n:03d}" for n in range(160)]
    assert len(await queued_job_ids(redis)) == 160
    for n, body in enumerate(distinct):
        event_id = f"evt_{n:03d}"
        assert await redis.hget(keys.event_key(event_id), "raw") == body
        assert await queued_event_id(redis, event_id) == event_id


async def test_healthz_answers_200_without_redis(start_receiver, free_port):
    receiver = await start_receiver(f"redis://127.0.0.1:{free_port()}/0")

    response = await receiver.get("/healthz")

    assert response.status == 200


async def test_readyz_answers_200_with_redis(receiver):
    response = await receiver.get("/readyz")

    assert response.status == 200


async def test_readyz_answers_503_without_redis(start_receiver, free_port):
    receiver = await start_receiver(f"redis://127.0.0.1:{free_port()}/0")

    response = await receiver.get("/readyz")

    assert response.status == 503


def test_serve_refuses_to_start_without_a_signing_secret(
    start_loops_webhooks, redis_url, free_port
):
    serve = start_loops_webhooks("serve", "--port", str(free_port()), env={"REDIS_URL": redis_url})

    assert serve.wait() == 2
    assert "LOOPS_WEBHOOK_SECRET" in serve.output()


def test_serve_without_a_secret_starts_no_embedded_redis(start_loops_webhooks, tmp_path, free_port):
    data_dir = tmp_path / "data"
    serve = start_loops_webhooks(
        "serve", "--port", str(free_port()), env={"LOOPS_DATA_DIR": str(data_dir)}
    )

    assert serve.wait() == 2
    assert not (data_dir / "redis.port").exists()


async def test_an_event_posted_to_the_serve_command_is_stored(
    start_loops_webhooks, redis_url, redis, loops, free_port
):
    port = free_port()
    receiver = start_loops_webhooks(
        "serve",
        "--port",
        str(port),
        env={"LOOPS_WEBHOOK_SECRET": loops.secret, "REDIS_URL": redis_url},
        port=port,
    )
    body = loops.event("evt_served")

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            receiver.base_url + WEBHOOK_PATH, data=body, headers=loops.headers(body)
        ) as response,
    ):
        assert response.status == 200, receiver.output()

    assert await redis.hget(keys.event_key("evt_served"), "raw") == body
    assert await queued_event_id(redis, "evt_served") == "evt_served"
