"""End to end: receipt-to-handler-start latency at a fixed offered rate, and peak memory.

Starts its own ``redis-server`` (loopback, AOF on with ``appendfsync always``, as the
durability promise needs), one ``loops-webhooks serve`` and one ``loops-webhooks worker``
whose one async handler, on ``checkout.session.completed``, appends the event id and
``time.time()`` to a file as its first statement. An open-loop load generator (aiohttp)
sends unique signed ~600-byte events at a fixed rate: each send is scheduled by the clock,
never by the previous answer. Then, per event handled:

- receipt to handler start: handler start - ``received_at`` of the event's hash (the receiver's
  clock reading, in whole ms, when the request reached the view);
- send to handler start: handler start - the generator's clock reading just before the send.

Reports p50/p99/max of both (and of the HTTP answer), the achieved rate, errors, the CPU each
process used, and the peak RSS (``VmHWM``) of the receiver and the worker. Redis, receiver and
worker are pinned to core 0 (``--worker-core 1`` moves the worker beside the generator); the
generator runs on core 1. The first ``WARMUP_SECONDS`` of load are sent at the same rate but
left out of the latency figures. Everything listens on 127.0.0.1; the run is bounded by
``--seconds`` plus a drain timeout. Prints a table; writes JSON to
``benchmarks/results/end_to_end-<UTC time>.json``. See ``benchmarks/README.md``.

    python benchmarks/end_to_end.py [--rate 500] [--seconds 30] [--worker-core 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run as a script
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import pinned_process
from tests.support.resources import cpu_seconds, memory_mib

SERVER_CORE = 0
LOAD_CORE = 1
SECRET = "whsec_benchmark_only"
WEBHOOK_PATH = "/webhooks/loops"
EVENT_TYPE = "checkout.session.completed"
WARMUP_SECONDS = 2.0
CONNECTIONS = 256
"""The generator's connection pool; a send waiting for a connection is late, and counted so."""
REQUEST_TIMEOUT_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 120.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGETS = {"p50_ms": 20.0, "p99_ms": 100.0, "rss_mib": 100.0}

HANDLERS_MODULE = """\
import os
import time

from loops_webhooks.handlers import Router

router = Router()
_starts = os.open({path!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@router.on({event_type!r}, name="record_start")
async def record_start(event, ctx):
    os.write(_starts, f"{{ctx.event_id}} {{time.time():.6f}}\\n".encode())
"""


def event_body(n: int) -> bytes:
    """A ~600-byte event shaped like the Loops doc's, unique by ``n``."""
    return orjson.dumps(
        {
            "id": f"evt_e2e_{n:09d}",
            "type": EVENT_TYPE,
            "created": "2025-01-15T10:35:00Z",
            "data": {
                "id": f"cs_e2e_{n:09d}",
                "url": f"https://checkout.loops.fi/cs_e2e_{n:09d}",
                "status": "completed",
                "paymentLinkId": "pl_1234567890",
                "externalCustomerId": f"customer_{n % 5000}",
                "metadata": {
                    "orderId": f"order_{n:09d}",
                    "source": "website",
                    "campaign": "spring-sale-2025",
                    "note": "x" * 160,
                },
                "createdAt": "2025-01-15T10:30:00Z",
                "completedAt": "2025-01-15T10:35:00Z",
            },
        }
    )


@dataclass(frozen=True, slots=True)
class Sent:
    scheduled_at: float
    sent_at: float
    answered_at: float
    status: int | None
    error: str | None


async def offer_load(url: str, events: list[tuple[bytes, str]], rate: float) -> list[Sent]:
    """Send event ``i`` at ``start + i / rate`` whatever became of the earlier ones."""
    import aiohttp

    results: list[Sent | None] = [None] * len(events)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(index: int, scheduled_at: float) -> None:
            body, signature = events[index]
            headers = {"content-type": "application/json", "loops-signature": signature}
            sent_at = time.time()
            status, error = None, None
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as failure:
                error = type(failure).__name__
            results[index] = Sent(scheduled_at, sent_at, time.time(), status, error)

        loop = asyncio.get_running_loop()
        start_wall, start_loop = time.time(), loop.time()
        sends = []
        for index in range(len(events)):
            delay = start_loop + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(send(index, start_wall + index / rate)))
        await asyncio.gather(*sends)
    return [sent for sent in results if sent is not None]


def wait_until_handled(
    starts: Path, expected: int, worker: subprocess.Popen[bytes]
) -> float | None:
    """Wait for ``expected`` handler starts; how long that took (s), None if they never came."""
    began = time.monotonic()
    deadline = began + DRAIN_TIMEOUT_SECONDS
    while True:
        with starts.open("rb") as lines:
            if sum(1 for _ in lines) >= expected:
                return time.monotonic() - began
        if worker.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def handler_starts(path: Path) -> dict[str, float]:
    """Event id -> its first handler start (a retry would append a later one)."""
    starts: dict[str, float] = {}
    for line in path.read_text().splitlines():
        event_id, started = line.split()
        starts.setdefault(event_id, float(started))
    return starts


def receipt_times(redis_url: str, event_ids: list[str]) -> dict[str, float]:
    """Event id -> ``received_at`` of its hash, in seconds."""
    from redis import Redis

    from loops_webhooks.workers import keys

    received: dict[str, float] = {}
    with Redis.from_url(redis_url) as client:
        for start in range(0, len(event_ids), 1000):
            batch = event_ids[start : start + 1000]
            with client.pipeline(transaction=False) as pipe:
                for event_id in batch:
                    pipe.hget(keys.event_key(event_id), "received_at")
                for event_id, value in zip(batch, pipe.execute(), strict=True):
                    if value is not None:
                        received[event_id] = int(value) / 1000
    return received


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50, p99 and the max, in ms."""
    if not values_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "count": 0}
    ordered = sorted(values_ms)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": rank(1.0), "count": len(ordered)}


def redis_command(workdir: Path) -> tuple[list[str], int]:
    """The command of a loopback ``redis-server`` with AOF (fsync every second), its port."""
    from loops_webhooks.embedded_redis import find_redis_server

    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    command = [
        str(find_redis_server()),
        "--bind", "127.0.0.1", "--port", str(port), "--dir", str(redis_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
    ]  # fmt: skip
    return command, port


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    starts_path = workdir / "handler_starts.txt"
    starts_path.touch()
    (workdir / "e2e_handlers.py").write_text(
        HANDLERS_MODULE.format(path=str(starts_path), event_type=EVENT_TYPE)
    )
    redis_server_command, redis_port = redis_command(workdir)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    port, metrics_port = free_port(), free_port()
    loops_webhooks = str(Path(sys.executable).parent / "loops-webhooks")
    common_env = {"REDIS_URL": redis_url, "LOOPS_LOG_FORMAT": "json"}
    receiver_env = {**common_env, "LOOPS_WEBHOOK_SECRET": SECRET}
    worker_env = {
        **common_env,
        "LOOPS_HANDLERS": "e2e_handlers:router",
        "LOOPS_METRICS_PORT": str(metrics_port),
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
    }
    warmup = int(WARMUP_SECONDS * args.rate)
    total = warmup + int(args.seconds * args.rate)
    events = []
    for n in range(total):
        body = event_body(n)
        events.append((body, hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()))

    with (
        pinned_process(redis_server_command, SERVER_CORE, workdir / "redis.log") as redis_server,
        pinned_process(
            [loops_webhooks, "serve", "--port", str(port)],
            SERVER_CORE,
            workdir / "receiver.log",
            receiver_env,
        ) as receiver,
        pinned_process(
            [
                loops_webhooks,
                "worker",
                *(["--concurrency", str(args.concurrency)] if args.concurrency else []),
            ],
            args.worker_core,
            workdir / "worker.log",
            worker_env,
        ) as worker,
    ):
        wait_for_port(redis_port, redis_server, workdir / "redis.log")
        wait_for_port(port, receiver, workdir / "receiver.log")
        wait_for_port(metrics_port, worker, workdir / "worker.log")
        processes = {"receiver": receiver, "worker": worker, "redis": redis_server}
        memory_idle = {name: memory_mib(processes[name].pid) for name in ("receiver", "worker")}
        cpu_before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        cpu_before["load_generator"] = cpu_seconds(os.getpid())
        load_started = time.monotonic()

        sent = asyncio.run(offer_load(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", events, args.rate))

        load_seconds = time.monotonic() - load_started
        cpu_used = {name: cpu_seconds(p.pid) - cpu_before[name] for name, p in processes.items()}
        cpu_used["load_generator"] = cpu_seconds(os.getpid()) - cpu_before["load_generator"]
        accepted_ids = [f"evt_e2e_{n:09d}" for n, answer in enumerate(sent) if answer.status == 200]
        drain_seconds = wait_until_handled(starts_path, len(accepted_ids), worker)
        memory = {name: memory_mib(processes[name].pid) for name in ("receiver", "worker")}
        received = receipt_times(redis_url, accepted_ids)

    return summarize(
        args,
        sent=sent,
        warmup=warmup,
        starts=handler_starts(starts_path),
        received=received,
        load_seconds=load_seconds,
        drain_seconds=drain_seconds,
        cpu_used=cpu_used,
        memory_idle=memory_idle,
        memory=memory,
    )


def summarize(
    args: argparse.Namespace,
    *,
    sent: list[Sent],
    warmup: int,
    starts: dict[str, float],
    received: dict[str, float],
    load_seconds: float,
    drain_seconds: float | None,
    cpu_used: dict[str, float],
    memory_idle: dict[str, dict[str, float]],
    memory: dict[str, dict[str, float]],
) -> dict[str, Any]:
    measured = sent[warmup:]
    receipt_to_start, send_to_start, send_to_answer = [], [], []
    not_handled = 0
    for n, answer in enumerate(measured, start=warmup):
        if answer.status != 200:
            continue
        send_to_answer.append(1000 * (answer.answered_at - answer.sent_at))
        event_id = f"evt_e2e_{n:09d}"
        started = starts.get(event_id)
        if started is None or event_id not in received:
            not_handled += 1
            continue
        receipt_to_start.append(1000 * (started - received[event_id]))
        send_to_start.append(1000 * (started - answer.sent_at))
    errors: dict[str, int] = {}
    for answer in sent:
        if answer.status != 200:
            kind = answer.error or f"HTTP {answer.status}"
            errors[kind] = errors.get(kind, 0) + 1
    span = measured[-1].sent_at - measured[0].sent_at
    lateness = percentiles([1000 * (a.sent_at - a.scheduled_at) for a in measured])
    receipt = percentiles(receipt_to_start)
    peak = {name: figures["peak_rss_mib"] for name, figures in memory.items()}
    return {
        "offered": {
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "warmup_seconds": WARMUP_SECONDS,
            "events": len(measured),
            "event_bytes": len(event_body(0)),
            "connections": CONNECTIONS,
        },
        "achieved": {
            "sent_per_s": round((len(measured) - 1) / span, 1),
            "accepted": sum(1 for a in measured if a.status == 200),
            "handled": len(receipt_to_start),
            "not_handled_by_drain_timeout": not_handled,
            "errors": errors,
            "send_lateness": lateness,
            "handled_per_s": None
            if drain_seconds is None
            else round(sum(1 for a in sent if a.status == 200) / (load_seconds + drain_seconds), 1),
            "load_seconds": round(load_seconds, 2),
            "drain_seconds_after_load": None if drain_seconds is None else round(drain_seconds, 2),
        },
        "latency": {
            "receipt_to_handler_start": receipt,
            "send_to_handler_start": percentiles(send_to_start),
            "send_to_answer": percentiles(send_to_answer),
        },
        "memory_mib": {
            name: {"after_start": memory_idle[name]["rss_mib"], **memory[name]} for name in memory
        },
        "cpu": {
            name: {
                "seconds": round(seconds, 2),
                "share_of_a_core": round(seconds / load_seconds, 2),
            }
            for name, seconds in cpu_used.items()
        },
        "cores": {
            "redis": SERVER_CORE,
            "receiver": SERVER_CORE,
            "worker": args.worker_core,
            "worker_concurrency": args.concurrency,
            "load_generator": LOAD_CORE,
        },
        "targets": {
            "receipt_p50_under_20_ms": _below(receipt["p50_ms"], TARGETS["p50_ms"]),
            "receipt_p99_under_100_ms": _below(receipt["p99_ms"], TARGETS["p99_ms"]),
            "receiver_rss_under_100_mib": peak["receiver"] < TARGETS["rss_mib"],
            "worker_rss_under_100_mib": peak["worker"] < TARGETS["rss_mib"],
        },
    }


def _below(value: float | None, target: float) -> bool:
    return value is not None and value < target


def print_table(results: dict[str, Any]) -> None:
    offered, achieved = results["offered"], results["achieved"]
    print(
        f"offered {offered['rate_per_s']:g} events/s for {offered['seconds']:g} s "
        f"(+{offered['warmup_seconds']:g} s warm-up, not counted), "
        f"{offered['event_bytes']}-byte events; worker on core {results['cores']['worker']}"
    )
    rows = [("latency", "p50 ms", "p99 ms", "max ms", "events")]
    for name, figures in results["latency"].items():
        rows.append(
            (
                name.replace("_", " "),
                *(
                    "-" if figures[key] is None else f"{figures[key]:.1f}"
                    for key in ("p50_ms", "p99_ms", "max_ms")
                ),
                str(figures["count"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    lateness = achieved["send_lateness"]
    print(
        f"sent {achieved['sent_per_s']:.1f}/s (sends late by p99 {lateness['p99_ms']} ms, "
        f"max {lateness['max_ms']} ms); accepted {achieved['accepted']}, handled "
        f"{achieved['handled']}, not handled {achieved['not_handled_by_drain_timeout']}; "
        f"errors {achieved['errors'] or 0}; "
        f"drain after load {achieved['drain_seconds_after_load']} s; the worker handled "
        f"{achieved['handled_per_s']}/s over load and drain"
    )
    for name, figures in results["memory_mib"].items():
        print(
            f"{name}: peak RSS {figures['peak_rss_mib']:.1f} MiB (after start "
            f"{figures['after_start']:.1f}, at end {figures['rss_mib']:.1f})"
        )
    print(
        "CPU, share of one core under load: "
        + ", ".join(
            f"{name} {figures['share_of_a_core']:.2f}" for name, figures in results["cpu"].items()
        )
    )
    print(
        "targets: "
        + ", ".join(
            f"{name} {'met' if ok else 'MISSED'}" for name, ok in results["targets"].items()
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500, help="events/s (%(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="measured load (%(default)s)")
    parser.add_argument(
        "--worker-core",
        type=int,
        choices=(SERVER_CORE, LOAD_CORE),
        default=SERVER_CORE,
        help="core of the worker: with Redis and the receiver (%(default)s) or beside the "
        "load generator",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="the worker's --concurrency (default: the service's own default)",
    )
    args = parser.parse_args(argv)
    if args.rate * args.seconds < 2:
        parser.error("--rate times --seconds must be at least 2 events")
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPU cores: one for the servers, one for the load", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="loops-e2e-") as tmp:
        results = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_before": load_before,
            },
            **run(args, Path(tmp)),
        }
    results["machine"]["load_average_after"] = os.getloadavg()
    print_table(results)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"end_to_end-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
