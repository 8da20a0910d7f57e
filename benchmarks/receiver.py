"""Load test: the receiver against a bare aiohttp handler, in one run, on this machine's loopback.

Each server gets core 0, both on uvloop; the receiver's Redis (``appendfsync always``) gets
core 1, as production gives Redis a host of its own, and shares it with ``wrk``, which sends
the same load to both: unique, signed, ~600-byte Loops events over 64 connections for N
seconds. Both run once per round, one after the other; prints req/s, p50, p99, errors and
CPU per request per round, each round's ratio and the median ratio, and writes the figures as
JSON to ``benchmarks/results/``. See ``benchmarks/README.md``.

With ``--costs`` each round also measures two variants of the receiver, to say where its CPU
per request goes: at ``LOOPS_LOG_LEVEL=warning`` (no request line), and with every Redis write
answered at once in the process (no redis-py call, no wait; the events are not stored, so it
is a measurement, never a configuration).

    python benchmarks/receiver.py [--seconds 10] [--connections 64] [--rounds 3] [--costs]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run as a script
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import pinned_process
from tests.support.resources import cpu_seconds

SERVER_CORE = 0
LOAD_CORE = 1
REDIS_CORE = 1
SECRET = "whsec_benchmark_only"
WEBHOOK_PATH = "/webhooks/loops"
EVENTS_PER_SECOND_OF_LOAD = 20_000
"""Events generated per second of load; more than either server answers, so none repeats."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"

WRK_SCRIPT = r"""
-- Sends pre-generated events, each once, in order: "<signature>\t<body>" per line of args[1].
local prepared = {}
local position = 0

function init(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    prepared[#prepared + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["loops-signature"] = line:sub(1, tab - 1),
    }, line:sub(tab + 1))
  end
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def bare_server(port: int) -> None:
    """The baseline: read the body, answer 200 ``{"received": true}``, nothing else; on
    uvloop, as the receiver runs."""
    import uvloop
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, receive)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def instant_redis_receiver(port: int) -> None:
    """``loops-webhooks serve`` whose Redis writes are answered at once, all "new", without
    redis-py or Redis: the receiver's CPU per request without its write (``--costs`` only)."""
    import asyncio

    from loops_webhooks import cli
    from loops_webhooks.workers.intake import EventIntake

    async def answered_at_once(
        self: EventIntake, script: object, script_keys: list[str], args: list[Any]
    ) -> list[int]:
        await asyncio.sleep(0)  # the request still suspends and resumes, as on a real write
        return [1] * (len(args) - 4)  # ARGV: the TTL, three prefixes, then one per event

    EventIntake._write = answered_at_once  # type: ignore[assignment,method-assign]
    sys.exit(cli.main(["serve", "--port", str(port)]))


def write_events(path: Path, count: int) -> None:
    """``count`` unique ~600-byte events shaped like the seed's, each with its signature."""
    with path.open("wb") as out:
        for n in range(count):
            body = orjson.dumps(
                {
                    "id": f"evt_bench_{n:09d}",
                    "type": "checkout.session.completed",
                    "created": "2025-01-15T10:35:00Z",
                    "data": {
                        "id": f"cs_bench_{n:09d}",
                        "url": f"https://checkout.loops.fi/cs_bench_{n:09d}",
                        "status": "completed",
                        "paymentLinkId": "pl_1234567890",
                        "externalCustomerId": f"customer_{n % 5000}",
                        "metadata": {
                            "orderId": f"order_{n:09d}",
                            "source": "website",
                            "campaign": "spring-sale-2025",
                            "note": "x" * 154,
                        },
                        "createdAt": "2025-01-15T10:30:00Z",
                        "completedAt": "2025-01-15T10:35:00Z",
                    },
                }
            )
            signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            out.write(signature.encode() + b"\t" + body + b"\n")


def run_wrk(
    wrk: str, url: str, events: Path, workdir: Path, seconds: int, connections: int
) -> dict[str, Any]:
    script = workdir / "events.lua"
    script.write_text(WRK_SCRIPT)
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(script), url, "--", str(events),
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {LOAD_CORE}),
    )
    [line] = [line for line in completed.stdout.splitlines() if line.startswith("WRK_JSON ")]
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
    }


def measure_bare(
    wrk: str, events: Path, workdir: Path, args: argparse.Namespace, round_: int
) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, __file__, "bare-server", "--port", str(port)]
    with pinned_process(command, SERVER_CORE, workdir / f"bare-{round_}.log") as server:
        wait_for_port(port, server)
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        before = cpu_seconds(server.pid)
        figures = run_wrk(wrk, url, events, workdir, args.seconds, args.connections)
        figures["cpu_seconds"] = {"server": round(cpu_seconds(server.pid) - before, 2)}
    return figures


def measure_receiver(
    wrk: str,
    events: Path,
    workdir: Path,
    args: argparse.Namespace,
    round_: int,
    variant: str = "receiver",
) -> dict[str, Any]:
    from loops_webhooks.embedded_redis import find_redis_server

    redis_port, port = free_port(), free_port()
    redis_dir = workdir / f"redis-{variant}-{round_}"
    redis_dir.mkdir()
    redis_command = [
        str(find_redis_server()),
        "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", str(redis_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
    ]  # fmt: skip
    receiver_command = [
        str(Path(sys.executable).parent / "loops-webhooks"),
        "serve", "--port", str(port),
    ]  # fmt: skip
    receiver_env = {
        "LOOPS_WEBHOOK_SECRET": SECRET,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LOOPS_METRICS_PORT": str(free_port()),
    }
    if variant == "receiver_no_request_line":
        receiver_env["LOOPS_LOG_LEVEL"] = "warning"
    elif variant == "receiver_instant_redis":
        receiver_command = [sys.executable, __file__, "instant-redis-receiver", "--port", str(port)]
    with (
        pinned_process(
            redis_command, REDIS_CORE, workdir / f"redis-{variant}-{round_}.log"
        ) as redis_server,
        pinned_process(
            receiver_command, SERVER_CORE, workdir / f"{variant}-{round_}.log", receiver_env
        ) as receiver,
    ):
        wait_for_port(redis_port, redis_server)
        wait_for_port(port, receiver)
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        before = cpu_seconds(receiver.pid), cpu_seconds(redis_server.pid)
        figures = run_wrk(wrk, url, events, workdir, args.seconds, args.connections)
        figures["cpu_seconds"] = {
            "receiver": round(cpu_seconds(receiver.pid) - before[0], 2),
            "redis": round(cpu_seconds(redis_server.pid) - before[1], 2),
        }
        figures["events_stored"] = stored_events(redis_port)
    return figures


def cpu_us_per_request(figures: dict[str, Any]) -> float:
    """The server's CPU (the receiver's alone, not Redis's) per request answered."""
    cpu = figures["cpu_seconds"].get("receiver", figures["cpu_seconds"].get("server", 0.0))
    return float(cpu) / max(1, figures["requests"]) * 1e6


def stored_events(redis_port: int) -> int:
    """Events recorded and not yet processed (no worker runs): one per accepted request."""
    import redis

    from loops_webhooks.workers import keys

    with redis.Redis(port=redis_port) as client:
        return int(client.zcard(keys.PENDING_EVENTS))


def print_table(results: dict[str, Any]) -> None:
    rows = [
        ("round", "target", "req/s", "p50 ms", "p99 ms", "errors", "requests", "CPU s", "CPU/req")
    ]
    for number, run in enumerate(results["rounds"], 1):
        for name in results["targets"]:
            r = run[name]
            rows.append(
                (
                    str(number),
                    name,
                    f"{r['req_per_s']:.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    str(r["errors"]),
                    str(r["requests"]),
                    " + ".join(f"{v:.1f}" for v in r["cpu_seconds"].values()),
                    f"{cpu_us_per_request(r):.0f} us",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    ratios = " ".join(f"{run['ratio']:.2f}" for run in results["rounds"])
    print(f"receiver / bare per round: {ratios}")
    print(f"receiver / bare, median of {len(results['rounds'])} rounds = {results['ratio']:.2f}x")
    print(f"receiver p99, median of the rounds = {results['receiver_p99_ms']:.1f} ms")
    stored = " ".join(str(run["receiver"]["events_stored"]) for run in results["rounds"])
    print(f"events stored by the receiver per round: {stored} (in-flight requests included)")
    print(
        f"CPU s: bare = server on core {SERVER_CORE}; "
        f"receiver = receiver on core {SERVER_CORE} + Redis on core {REDIS_CORE} (with wrk); "
        "CPU/req: the server's alone"
    )
    for name in results["targets"]:
        median = statistics.median(cpu_us_per_request(run[name]) for run in results["rounds"])
        print(f"median CPU per request, {name}: {median:.0f} us")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="load per target (%(default)s)")
    parser.add_argument("--connections", type=int, default=64, help="(%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (%(default)s)")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="also measure the receiver without its request line and without its Redis write",
    )
    commands = parser.add_subparsers(dest="command")
    bare = commands.add_parser("bare-server", help="run the baseline server (used internally)")
    bare.add_argument("--port", type=int, required=True)
    instant = commands.add_parser("instant-redis-receiver", help="(used internally by --costs)")
    instant.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    if args.command == "bare-server":
        bare_server(args.port)
        return 0
    if args.command == "instant-redis-receiver":
        instant_redis_receiver(args.port)
        return 0
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPU cores: one for the servers, one for the load", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="loops-bench-") as tmp:
        workdir = Path(tmp)
        events = workdir / "events.tsv"
        event_count = EVENTS_PER_SECOND_OF_LOAD * args.seconds
        write_events(events, event_count)
        results: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_before": os.getloadavg(),
            },
            "load": {
                "generator": "wrk -t1, pre-generated signed events",
                "connections": args.connections,
                "seconds": args.seconds,
                "events_generated": event_count,
                "event_bytes": events.stat().st_size // event_count - 66,
            },
            "setup": {
                "server_core": SERVER_CORE,
                "redis_core": REDIS_CORE,
                "load_core": LOAD_CORE,
                "event_loop": "uvloop (both servers)",
                "redis": "appendonly yes, appendfsync always",
            },
            "rounds": [],
        }
        variants = ["receiver"]
        if args.costs:
            variants += ["receiver_no_request_line", "receiver_instant_redis"]
        results["targets"] = ["bare_aiohttp", *variants]
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always runs on a machine the other warmed.
            order = results["targets"] if round_ % 2 == 0 else results["targets"][::-1]
            run: dict[str, Any] = {}
            for name in order:
                if name == "bare_aiohttp":
                    run[name] = measure_bare(wrk, events, workdir, args, round_)
                else:
                    run[name] = measure_receiver(wrk, events, workdir, args, round_, name)
            run["ratio"] = round(run["receiver"]["req_per_s"] / run["bare_aiohttp"]["req_per_s"], 3)
            results["rounds"].append(run)
            print(f"round {round_ + 1}: receiver / bare = {run['ratio']:.2f}x", flush=True)
            for name in results["targets"]:
                if run[name]["requests"] > event_count:
                    print(f"warning: {name} got more requests than unique events", file=sys.stderr)
    results["ratio"] = statistics.median(run["ratio"] for run in results["rounds"])
    results["receiver_p99_ms"] = statistics.median(
        run["receiver"]["p99_ms"] for run in results["rounds"]
    )

    print_table(results)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"receiver-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
