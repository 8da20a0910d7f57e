"""Fuzzing the receiver: arbitrary requests, byte for byte, against ``create_app`` and a real Redis.

Hypothesis draws whole HTTP/1.1 requests: headers (repeated and oddly cased
``loops-signature``, non-ASCII values, surrounding whitespace, lines HTTP forbids), bodies
(arbitrary bytes, arbitrary JSON, near-valid events, invalid UTF-8, sizes around a 4 KiB
``max_body_bytes``), framing (Content-Length, or hand-made chunks with extensions and
trailers) and signatures (valid for the exact bytes, or not). They are written on a raw socket
to the app served by aiohttp's ``TestServer``: aiohttp's client refuses or rewrites much of
what is worth sending.

Every answer must satisfy:

- no 5xx (Redis is up, so not even 503);
- a JSON body holding ``received`` or ``error``, unless the request is not valid HTTP/1.1 and
  aiohttp's parser refused it before the app ran (a plain-text 400, which stores nothing);
- an unsigned, wrongly signed or oversized request writes nothing to Redis;
- a validly signed body within the limit is accepted (200: the event hash holds exactly its
  bytes) or dead-lettered (400 ``invalid_payload``: a dead letter holds exactly its bytes);
  over the limit it is refused 413; sent again, it writes nothing more.

Two kinds of input once broke the receiver and have regression tests of their own at the end
of this module: non-UTF-8 values in the headers kept for replay (they poisoned a whole batch)
and bodies that do not decode under their ``Content-Encoding`` (a 500; the receiver now never
decompresses, since the signature covers the bytes as sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from loops_webhooks.ingest.views import MAX_EVENT_ID_LENGTH
from loops_webhooks.workers import keys
from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
from loops_webhooks.workers.sessions import session_id

LIMIT = 4096
"""``max_body_bytes`` of the fuzzed receiver: small, so bodies around it are cheap to send."""
WEBHOOK_PATH = "/webhooks/loops"
QUEUE = "loops:queue"
EXCHANGE_TIMEOUT_SECONDS = 5.0
"""Far beyond any answer on loopback with Redis up; bounds an example that hangs."""
ANSWER_TIMEOUT_SECONDS = 2.0


@pytest.fixture
async def receiver(start_receiver, redis_url: str) -> TestServer:
    """A 4 KiB body limit, and a one-second Redis deadline, so that an example failing with
    503 shrinks quickly."""
    client = await start_receiver(redis_url, max_body_bytes=LIMIT, redis_timeout_seconds=1.0)
    return client.server


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def document(self) -> Any:
        return orjson.loads(self.body)


async def exchange(server: TestServer, wire: bytes) -> Answer:
    """Send ``wire`` on a fresh connection and read the one final answer (1xx skipped)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(wire)
        with contextlib.suppress(ConnectionError):  # an early 413 may stop reading
            await writer.drain()
        async with asyncio.timeout(EXCHANGE_TIMEOUT_SECONDS):
            raw = await reader.read()
    finally:
        writer.close()
    while True:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"no complete answer: {raw[:300]!r}"
        status_line, *header_lines = head.split(b"\r\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
        raw = rest
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", len(rest)))
    return Answer(status, headers.get(b"content-type", b"").decode("latin-1"), rest[:length])


async def redis_contents(redis: Redis) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    return {key: await redis.dump(key) async for key in redis.scan_iter()}


def usable_identity(body: bytes) -> tuple[str, str] | None:
    """The (id, type) the HTTP contract requires of an event, or None for an unusable body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    event_id, event_type = document.get("id"), document.get("type")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
        return None
    if not isinstance(event_type, str) or not event_type:
        return None
    return event_id, event_type


# What a request is made of ------------------------------------------------------------------

VALID_SIGNATURES = ("valid", "valid upper-case", "valid in whitespace")
INVALID_SIGNATURES = (
    "for another body",
    "by another secret",
    "one digit short",
    "one digit long",
    "garbage",
)


@dataclass(frozen=True)
class SignatureHeader:
    name: str
    kind: str
    garbage: bytes

    def value(self, body: bytes, secret: str) -> bytes:
        right = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        values = {
            "valid": right,
            "valid upper-case": right.upper(),
            "valid in whitespace": f" \t{right} \t",
            "for another body": hmac.new(secret.encode(), body + b"\n", hashlib.sha256).hexdigest(),
            "by another secret": hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest(),
            "one digit short": right[:-1],
            "one digit long": right + "0",
        }
        return self.garbage if self.kind == "garbage" else values[self.kind].encode()


@dataclass(frozen=True)
class Chunking:
    sizes: tuple[int, ...]
    upper_hex: bool
    leading_zeros: bool
    extensions: bool
    trailer: bool

    def encode(self, body: bytes) -> bytes:
        out, position, turn = bytearray(), 0, 0
        while position < len(body):
            size = self.sizes[turn % len(self.sizes)]
            chunk, position, turn = body[position : position + size], position + size, turn + 1
            digits = f"{len(chunk):X}" if self.upper_hex else f"{len(chunk):x}"
            out += ("00" + digits if self.leading_zeros else digits).encode()
            out += b";name=value" if self.extensions else b""
            out += b"\r\n" + chunk + b"\r\n"
        out += b"0\r\n" + (b"x-trailer: 1\r\n" if self.trailer else b"") + b"\r\n"
        return bytes(out)


@dataclass(frozen=True)
class FuzzRequest:
    body: bytes
    signatures: tuple[SignatureHeader, ...]
    headers: tuple[tuple[bytes, bytes], ...]
    malformed: tuple[bytes, ...]
    chunking: Chunking | None
    content_length_omitted: bool
    query: str

    def breaks_http(self) -> bool:
        """Lines HTTP/1.1 forbids, or a field that may appear once given twice."""
        names = [name.decode("latin-1").lower() for name, _ in self.headers]
        repeated = {name for name in names if names.count(name) > 1}
        return bool(self.malformed) or bool(repeated & SINGLETON_HEADERS)

    def validly_signed(self) -> bool:
        return len(self.signatures) == 1 and self.signatures[0].kind in VALID_SIGNATURES

    def too_large(self) -> bool:
        return len(self.body) > LIMIT

    def wire(self, secret: str) -> bytes:
        lines = [f"POST {WEBHOOK_PATH}{self.query} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        lines += [b"Connection: close"]
        lines += [s.name.encode() + b": " + s.value(self.body, secret) for s in self.signatures]
        lines += [name + b": " + value for name, value in self.headers]
        lines += list(self.malformed)
        if self.chunking is not None:
            lines.append(b"Transfer-Encoding: chunked")
            payload = self.chunking.encode(self.body)
        else:
            if not self.content_length_omitted:
                lines.append(b"Content-Length: %d" % len(self.body))
            payload = self.body
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING_HEADERS = {
    "connection", "content-encoding", "content-length", "expect", "host", "keep-alive",
    "te", "trailer", "transfer-encoding", "upgrade",
}  # fmt: skip
KEPT_HEADERS = {"content-type", "user-agent"}
"""With ``loops-*``, the headers the receiver keeps for replay (``_headers_worth_keeping``)."""
rarely = st.integers(0, 9).map(lambda n: n == 7)
FIELD_BYTES = [0x09, 0x20, *range(0x21, 0x7F), *range(0x80, 0x100)]
"""What HTTP/1.1 allows in a field value: visible ASCII, SP, HTAB and obs-text."""


@st.composite
def odd_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))


def with_odd_case(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return names.flatmap(odd_case)


def is_free_header_name(name: str) -> bool:
    lowered = name.lower()
    return not (
        lowered in FRAMING_HEADERS or lowered in KEPT_HEADERS or lowered.startswith("loops-")
    )


field_values = st.lists(st.sampled_from(FIELD_BYTES), max_size=40).map(bytes)
utf8_field_values = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40).map(
    lambda text: text.strip().encode()
)
loops_header_names = with_odd_case(
    st.sampled_from(["loops-delivery-id", "loops-timestamp"])
    | st.text(TOKEN_CHARS, min_size=1, max_size=12)
    .map(lambda suffix: "loops-" + suffix)
    .filter(lambda name: name.lower() != "loops-signature")
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"APPLICATION/JSON;charset=latin-1",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=xyz",
        b"",
    ]
)
repeatable_headers = st.one_of(
    st.tuples(
        st.text(TOKEN_CHARS, min_size=1, max_size=24).filter(is_free_header_name).map(str.encode),
        field_values,
    ),
    st.tuples(loops_header_names.map(str.encode), utf8_field_values | field_values),
)
content_type_headers = st.tuples(
    with_odd_case(st.just("content-type")).map(str.encode), content_types | utf8_field_values
)
user_agent_headers = st.tuples(
    with_odd_case(st.just("user-agent")).map(str.encode), utf8_field_values | field_values
)
content_encoding_headers = st.tuples(
    with_odd_case(st.just("content-encoding")).map(str.encode),
    st.sampled_from([b"identity", b"x-unknown", b"", b"gzip", b"deflate", b"br"]),
)


@st.composite
def header_sets(draw: st.DrawFn, *, repeat_a_singleton: bool) -> tuple[tuple[bytes, bytes], ...]:
    """Headers other than the signature and framing, in any order."""
    headers = draw(st.lists(repeatable_headers, max_size=5))
    for optional in (content_type_headers, user_agent_headers, content_encoding_headers):
        if draw(st.booleans()):
            headers.append(draw(optional))
    if draw(st.booleans()):
        headers.append((b"Expect", b"100-continue"))
    if repeat_a_singleton:
        headers += [draw(content_type_headers)] * 2
    return tuple(draw(st.permutations(headers)))


malformed_lines = st.one_of(
    st.builds(
        lambda left, bad, right: b"x-" + left.encode() + bad + right.encode() + b": 1",
        st.text(TOKEN_CHARS, max_size=6),
        st.sampled_from([b" ", b"\xc3\xa9", b"(", b"@", b"/", b'"', b"\x00", b"\x7f"]),
        st.text(TOKEN_CHARS, max_size=6),
    ),
    st.sampled_from([0x00, 0x01, 0x08, 0x0B, 0x0C, 0x1B, 0x7F]).map(
        lambda control: b"x-control: a" + bytes([control]) + b"b"
    ),
    st.sampled_from([b"x-space-before-colon : 1", b"x-no-colon", b"x-folded: a\r\n\tb"]),
)
signature_headers = st.builds(
    SignatureHeader,
    name=with_odd_case(st.just("loops-signature")),
    kind=st.sampled_from(VALID_SIGNATURES + INVALID_SIGNATURES),
    garbage=field_values,
)
valid_signature_headers = st.builds(
    SignatureHeader,
    name=with_odd_case(st.just("loops-signature")),
    kind=st.sampled_from(VALID_SIGNATURES),
    garbage=st.just(b""),
)
any_signature_sets = st.one_of(
    st.tuples(signature_headers),
    st.lists(signature_headers, max_size=3).map(tuple),
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
identities = st.one_of(
    st.text(max_size=30),
    st.integers(MAX_EVENT_ID_LENGTH - 1, MAX_EVENT_ID_LENGTH + 1).map(lambda n: "é" * n),
    json_values,
)
EVENT_TYPES = ["checkout.session.completed", "checkout.session.expired", "checkout.session.failed"]
event_types = st.sampled_from(EVENT_TYPES) | identities


def as_json(document: Any, *, ensure_ascii: bool = False, indent: int | None = None) -> bytes:
    """JSON text of anything Python's json writes (big integers, NaN); lone surrogates become
    invalid UTF-8 unless escaped."""
    text = json.dumps(document, ensure_ascii=ensure_ascii, indent=indent)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_bodies(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> bytes:
    return as_json(
        draw(documents),
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.none() | st.integers(0, 2)),
    )


near_valid_events = st.fixed_dictionaries(
    {},
    optional={
        "id": identities,
        "type": event_types,
        "created": json_scalars,
        "data": json_values,
        "livemode": json_scalars,
    },
)


@st.composite
def events_of_size(draw: st.DrawFn) -> bytes:
    """A realistic event padded to a size drawn around the limit (or anywhere below it)."""
    size = draw(st.integers(LIMIT - 16, LIMIT + 16) | st.integers(0, LIMIT + 256))
    document = {
        "id": "evt_" + draw(st.text(min_size=1, max_size=40)),
        "type": draw(event_types if draw(rarely) else st.sampled_from(EVENT_TYPES)),
        "created": "2025-01-15T10:35:00Z",
        "data": {"id": "cs_abc123", "status": "completed", "metadata": {"orderId": "o_1"}},
        "pad": "",
    }
    document["pad"] = "x" * max(0, size - len(as_json(document)))
    return as_json(document)


@st.composite
def with_invalid_utf8(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    body = draw(valid)
    at = draw(st.integers(0, len(body)))
    junk = draw(st.sampled_from([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]))
    return body[:at] + junk + body[at:]


unusual_bodies = st.one_of(
    st.binary(max_size=256),
    st.integers(LIMIT - 4, LIMIT + 4).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    json_bodies(json_values),
    json_bodies(near_valid_events),
    with_invalid_utf8(events_of_size() | json_bodies(near_valid_events)),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Half realistic events (mostly usable), half anything else."""
    return draw(events_of_size() if draw(st.booleans()) else unusual_bodies)


chunkings = st.builds(
    Chunking,
    sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=5).map(tuple),
    upper_hex=st.booleans(),
    leading_zeros=st.booleans(),
    extensions=st.booleans(),
    trailer=st.booleans(),
)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> FuzzRequest:
    body = draw(bodies())
    chunking = draw(st.none() | chunkings)
    http = draw(st.sampled_from(["valid"] * 8 + ["malformed lines", "a singleton repeated"]))
    valid_signature = draw(st.booleans())
    return FuzzRequest(
        body=body,
        signatures=draw(
            st.tuples(valid_signature_headers) if valid_signature else any_signature_sets
        ),
        headers=draw(header_sets(repeat_a_singleton=http == "a singleton repeated")),
        malformed=tuple(
            draw(st.lists(malformed_lines, min_size=1, max_size=2))
            if http == "malformed lines"
            else ()
        ),
        chunking=chunking,
        content_length_omitted=chunking is None and not body and draw(st.booleans()),
        query=draw(st.sampled_from(["", "?", "?a=1", "?x=%ff&y"])),
    )


# The property --------------------------------------------------------------------------------


async def assert_answer_keeps_the_contract(
    request: FuzzRequest, answer: Answer, redis: Redis
) -> dict[bytes, bytes]:
    """Check one answer to ``request`` sent to an empty database; return what Redis holds."""
    stored = await redis_contents(redis)
    if not answer.content_type.startswith("application/json"):
        assert request.breaks_http(), f"a valid request got a non-JSON answer: {answer}"
        assert answer.status == 400, answer
        assert stored == {}
        event("refused by the HTTP parser")
        return stored
    document = answer.document()
    assert isinstance(document, dict) and ("received" in document or "error" in document), answer
    assert answer.status < 500, answer
    event(f"{answer.status} {document.get('error', 'received')}")

    if request.too_large():
        assert (answer.status, document["error"]) == (413, "payload_too_large"), answer
        assert stored == {}
    elif not request.validly_signed():
        assert (answer.status, document["error"]) == (401, "invalid_signature"), answer
        assert stored == {}
    elif (identity := usable_identity(request.body)) is not None:
        event_id, event_type = identity
        assert answer.status == 200, answer
        assert document == {"received": True, "id": event_id, "duplicate": False}
        job_key = keys.arq_job_key(keys.job_id_for_event(event_id))
        session = session_id(orjson.loads(request.body))
        search_indexes = {key for key in stored if key.startswith(keys.SEARCH_PREFIX.encode())}
        assert set(stored) - search_indexes == {
            keys.event_key(event_id).encode(),
            job_key.encode(),
            keys.PENDING_EVENTS.encode(),
            keys.EVENT_INDEX.encode(),
            keys.SEARCH_TERMS.encode(),
            QUEUE.encode(),
        } | ({keys.session_events_key(session).encode()} if session is not None else set())
        for index in search_indexes:
            assert await redis.zrange(index, 0, -1) == [event_id.encode()]
        record = await redis.hgetall(keys.event_key(event_id))
        assert record[b"raw"] == request.body
        assert record[b"type"] == event_type.encode()
    else:
        assert (answer.status, document["error"]) == (400, "invalid_payload"), answer
        [letter_id] = await redis.zrange(keys.DEAD_LETTER_INDEX, 0, -1)
        letter_key = keys.dead_letter_key(letter_id.decode())
        assert set(stored) == {
            keys.DEAD_LETTER_INDEX.encode(),
            keys.DEAD_LETTER_REASON_COUNTS.encode(),
            letter_key.encode(),
        }
        letter = await redis.hgetall(letter_key)
        assert letter[b"raw"] == request.body
        assert letter[b"reason"] == b"invalid_payload"
    return stored


@settings(
    max_examples=400,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fuzzed=fuzz_requests(), send_twice=st.booleans())
async def test_any_request_is_answered_by_the_contract_and_only_signed_bodies_are_stored(
    receiver, redis, loops, fuzzed, send_twice
):
    await redis.flushdb()
    wire = fuzzed.wire(loops.secret)

    first = await exchange(receiver, wire)
    stored = await assert_answer_keeps_the_contract(fuzzed, first, redis)

    if send_twice:
        again = await exchange(receiver, wire)
        assert again.status == first.status, (first, again)
        if first.status == 200:
            assert again.document() == {**first.document(), "duplicate": True}
        assert await redis_contents(redis) == stored


# Regressions: bugs the property above found -------------------------------------------------

NON_UTF8_KEPT_HEADERS = [
    b"loops-delivery-id: d\xff1",
    b"User-Agent: Loops\xe9/1.0",
    b"Content-Type: application/json; note=\xc0",
]


def signed_request(loops, body: bytes, *extra_headers: bytes) -> bytes:
    lines = [
        f"POST {WEBHOOK_PATH} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"loops-signature: " + loops.signature(body).encode(),
        b"Content-Length: %d" % len(body),
        *extra_headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("header", NON_UTF8_KEPT_HEADERS, ids=["loops-*", "user-agent", "type"])
async def test_a_signed_event_with_a_non_utf8_header_kept_for_replay_is_stored(
    receiver, redis, loops, header
):
    body = loops.event("evt_header")

    async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
        answer = await exchange(receiver, signed_request(loops, body, header))

    assert answer.status == 200, answer
    assert await redis.hget(keys.event_key("evt_header"), "raw") == body


@pytest.mark.parametrize("header", NON_UTF8_KEPT_HEADERS, ids=["loops-*", "user-agent", "type"])
async def test_a_signed_unusable_body_with_a_non_utf8_header_kept_for_replay_is_dead_lettered(
    receiver, redis, loops, header
):
    async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
        answer = await exchange(receiver, signed_request(loops, b"not json", header))

    assert answer.status == 400, answer
    assert await redis.zcard(keys.DEAD_LETTER_INDEX) == 1


async def test_an_event_is_stored_even_when_another_of_its_batch_has_an_undecodable_header(
    redis, loops
):
    intake = EventIntake(redis, queue_name=QUEUE)
    undecodable = b"d\xff1".decode("utf-8", "surrogateescape")  # as aiohttp hands it over

    def received(event_id: str, headers: dict[str, str]) -> ReceivedEvent:
        return ReceivedEvent(event_id, EVENT_TYPES[0], loops.event(event_id), headers, 0)

    submits = asyncio.gather(
        intake.submit(received("evt_poisoned", {"loops-delivery-id": undecodable})),
        intake.submit(received("evt_good", {})),
        return_exceptions=True,
    )
    async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
        await submits

    assert await redis.exists(keys.event_key("evt_good")) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_signed_body_is_verified_and_kept_as_sent_whatever_its_content_encoding(
    receiver, redis, loops, encoding
):
    body = b"this body is not compressed"
    request = signed_request(loops, body, b"Content-Encoding: " + encoding.encode())

    answer = await exchange(receiver, request)

    assert answer.content_type.startswith("application/json"), answer
    assert answer.status == 400, answer
    assert answer.document()["error"] == "invalid_payload"
    [letter_id] = await redis.zrange(keys.DEAD_LETTER_INDEX, 0, -1)
    assert await redis.hget(keys.dead_letter_key(letter_id.decode()), "raw") == body
