"""Throughput: one ``loops-webhooks worker`` against a bare arq worker, in one run, on loopback.

Both drain the same number of pre-loaded jobs from a dedicated ``redis-server`` that this
script starts (no persistence, loopback only), with the same concurrency and poll delay and
a JSON job serializer:

- ``bare_arq``: ``arq.worker.Worker`` running a no-op job, jobs enqueued with
  ``ArqRedis.enqueue_job``, ``keep_result=0`` (ours keeps no result either), on arq's own
  (the standard library's) event loop;
- ``bare_arq_uvloop``: the same on uvloop, as ours runs;
- ``loops_webhooks``: ``loops-webhooks worker`` with one no-op async handler on ``"*"``,
  events recorded and enqueued with ``EventIntake.submit`` (the receiver's producer API), so
  every job does the full bookkeeping: begin, parse, run, finish, log line;
- ``loops_webhooks_quiet``: the same at ``LOOPS_LOG_LEVEL=warning``, to show the log's share.

Each worker runs alone on core 0 (Redis and this script on core 1). The rate is jobs over
the time from the last look at a full queue to the first look at an empty one (polled every
2 ms), so start-up is not counted. Prints a table and the ratio; writes the figures as JSON
to ``benchmarks/results/worker-<timestamp>.json``.

    python benchmarks/worker.py [--events 5000] [--rounds 3] [--ordering off]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run as a script
from tests.support.ports import free_port
from tests.support.processes import pinned_process
from tests.support.resources import cpu_seconds

WORKER_CORE = 0
REDIS_CORE = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STARTUP_TIMEOUT_SECONDS = 20.0
DRAIN_TIMEOUT_SECONDS = 300.0
SAMPLE_SECONDS = 0.002
EVENT_TYPE = "checkout.session.completed"
BARE_QUEUE = "bench:bare"
BARE_JOB = "noop"

HANDLERS_MODULE = """\
from loops_webhooks.handlers import Router

router = Router()


@router.on("*", name="noop")
async def noop(event, ctx):
    pass
"""


def event_body(n: int) -> bytes:
    """An event shaped like the seed's sample (~400 bytes), unique by ``n``: its checkout
    session too, so admission's ordering never holds one back (the cost measured is its
    bookkeeping)."""
    return orjson.dumps(
        {
            "id": f"evt_bench_{n:09d}",
            "type": EVENT_TYPE,
            "created": "2025-01-15T10:35:00Z",
            "data": {
                "id": f"cs_bench_{n:09d}",
                "url": f"https://checkout.loops.fi/cs_bench_{n:09d}",
                "status": "completed",
                "paymentLinkId": "pl_1234567890",
                "externalCustomerId": f"customer_{n % 5000}",
                "metadata": {"orderId": f"order_{n:09d}", "source": "website"},
                "createdAt": "2025-01-15T10:30:00Z",
                "completedAt": "2025-01-15T10:35:00Z",
            },
        }
    )


async def noop(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
    """The bare worker's job: same arguments as ``process_event``, does nothing."""


def run_bare_worker(redis_url: str, concurrency: int, poll_delay: float, on_uvloop: bool) -> None:
    """The baseline, run in its own process by this script."""
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    if on_uvloop:
        import uvloop

        asyncio.set_event_loop(uvloop.new_event_loop())  # arq's Worker runs on the current loop

    Worker(
        functions=[func(noop, name=BARE_JOB)],
        queue_name=BARE_QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url),
        max_jobs=concurrency,
        poll_delay=poll_delay,
        keep_result=0,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        handle_signals=True,
    ).run()


async def preload_bare(redis_url: str, count: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        default_queue_name=BARE_QUEUE,
    )
    try:
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    pool.enqueue_job(BARE_JOB, f"evt_bench_{n:09d}", EVENT_TYPE)
                    for n in range(start, min(start + 500, count))
                )
            )
    finally:
        await pool.aclose()


async def preload_loops(redis_url: str, count: int) -> None:
    from redis.asyncio import Redis

    from loops_webhooks.settings import Settings
    from loops_webhooks.workers.intake import EventIntake, received_event

    settings = Settings()
    redis = Redis.from_url(redis_url)
    intake = EventIntake(redis, queue_name=settings.queue_name)
    now_ms = int(time.time() * 1000)
    try:
        for start in range(0, count, 1000):
            events = []
            for n in range(start, min(start + 1000, count)):
                body = event_body(n)
                events.append(
                    received_event(
                        f"evt_bench_{n:09d}",
                        EVENT_TYPE,
                        body,
                        {"content-type": "application/json", "loops-signature": "0" * 64},
                        now_ms,
                        orjson.loads(body),
                        metadata_keys=settings.search_metadata_keys,
                    )
                )
            created = await asyncio.gather(*(intake.submit(event) for event in events))
            assert all(created), "the benchmark's Redis was not empty"
    finally:
        await redis.aclose()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from loops_webhooks.embedded_redis import find_redis_server

    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    command = [
        str(find_redis_server()),
        "--bind", "127.0.0.1", "--port", str(port), "--dir", str(redis_dir),
        "--appendonly", "no", "--save", "",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, {REDIS_CORE}),
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        with contextlib.suppress(RedisConnectionError), Redis.from_url(url) as client:
            client.ping()
            return process, url
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"redis-server did not start; see {workdir / 'redis.log'}")
        time.sleep(0.05)


def drain(
    redis_url: str,
    queue: str,
    total: int,
    worker: subprocess.Popen[bytes],
    log: Path,
    redis_pid: int,
) -> dict[str, Any]:
    """Watch ``queue`` until it is empty; the rate from the last full to the first empty look."""
    from redis import Redis

    with Redis.from_url(redis_url) as client:
        last_full = time.perf_counter()
        cpu_at_start = cpu_seconds(worker.pid)
        redis_cpu_at_start = cpu_seconds(redis_pid)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        samples = 0
        while True:
            now = time.perf_counter()
            left = client.zcard(queue)
            samples += 1
            if left == total:
                last_full = now
                cpu_at_start = cpu_seconds(worker.pid)
                redis_cpu_at_start = cpu_seconds(redis_pid)
            elif left == 0:
                elapsed = now - last_full
                worker_cpu = cpu_seconds(worker.pid) - cpu_at_start
                redis_cpu = cpu_seconds(redis_pid) - redis_cpu_at_start
                break
            if worker.poll() is not None:
                output = log.read_text(errors="replace")[-3000:]
                raise SystemExit(
                    f"worker exited with {worker.returncode} while draining:\n{output}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"{left} jobs still queued after {DRAIN_TIMEOUT_SECONDS}s")
            time.sleep(SAMPLE_SECONDS)
        reads = client.info("stats")["total_reads_processed"] - samples - 1
        commands = {
            name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in client.info("commandstats").items()
            if name != "cmdstat_zcard"
        }
    return {
        "jobs": total,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(total / elapsed, 1),
        "worker_cpu_seconds": round(worker_cpu, 2),
        "worker_cpu_ms_per_job": round(1000 * worker_cpu / total, 3),
        "redis_cpu_ms_per_job": round(1000 * redis_cpu / total, 3),
        "redis_round_trips_per_job": round(reads / total, 2),
        "redis_commands_per_job": {
            name: round(calls / total, 2)
            for name, calls in sorted(commands.items(), key=lambda item: -item[1])
            if calls >= total / 10
        },
    }


def reset_redis(redis_url: str) -> None:
    from redis import Redis

    with Redis.from_url(redis_url) as client:
        client.flushall()


def measure(
    contender: str,
    redis_url: str,
    redis_pid: int,
    workdir: Path,
    args: argparse.Namespace,
    round_: int,
) -> dict[str, Any]:
    from loops_webhooks.settings import Settings

    reset_redis(redis_url)
    log = workdir / f"{contender}-{round_}.log"
    if contender.startswith("bare_arq"):
        asyncio.run(preload_bare(redis_url, args.events))
        queue = BARE_QUEUE
        command = [
            sys.executable, __file__,
            "--concurrency", str(args.concurrency), "--poll-delay", str(args.poll_delay),
            "bare-arq-worker", "--redis-url", redis_url,
            *(["--uvloop"] if contender == "bare_arq_uvloop" else []),
        ]  # fmt: skip
        env: dict[str, str] = {}
    else:
        asyncio.run(preload_loops(redis_url, args.events))
        queue = Settings().queue_name
        command = [str(Path(sys.executable).parent / "loops-webhooks"), "worker"]
        env = {
            "REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
            "LOOPS_HANDLERS": "bench_handlers:router",
            "LOOPS_WORKER_CONCURRENCY": str(args.concurrency),
            "LOOPS_POLL_INTERVAL_SECONDS": str(args.poll_delay),
            "LOOPS_METRICS_PORT": str(free_port()),
            "LOOPS_LOG_FORMAT": "json",
            "LOOPS_LOG_LEVEL": "warning" if contender == "loops_webhooks_quiet" else "info",
            "LOOPS_ORDERING": args.ordering,
        }
    reset_stats(redis_url)
    with pinned_process(command, WORKER_CORE, log, env) as worker:
        figures = drain(redis_url, queue, args.events, worker, log, redis_pid)
    if not contender.startswith("bare_arq"):
        figures["events_left_pending"] = pending_events(redis_url)
    return figures


def reset_stats(redis_url: str) -> None:
    from redis import Redis

    with Redis.from_url(redis_url) as client:
        client.config_resetstat()


def pending_events(redis_url: str) -> int:
    from redis import Redis

    from loops_webhooks.workers import keys

    with Redis.from_url(redis_url) as client:
        return int(client.zcard(keys.PENDING_EVENTS))


CONTENDERS = ("bare_arq", "bare_arq_uvloop", "loops_webhooks", "loops_webhooks_quiet")
OURS = ("loops_webhooks", "loops_webhooks_quiet")


def print_table(results: dict[str, Any]) -> None:
    rows = [
        (
            "worker",
            "jobs/s (median)",
            "rounds",
            "worker CPU ms/job",
            "Redis CPU ms/job",
            "round trips/job",
            "Redis cmds/job",
        )
    ]
    for name in CONTENDERS:
        summary = results["summary"][name]
        rows.append(
            (
                name,
                f"{summary['jobs_per_s_median']:.0f}",
                " ".join(f"{rate:.0f}" for rate in summary["jobs_per_s_rounds"]),
                f"{summary['worker_cpu_ms_per_job_median']:.3f}",
                f"{summary['redis_cpu_ms_per_job_median']:.3f}",
                f"{summary['redis_round_trips_per_job']:.1f}",
                f"{summary['redis_commands_per_job']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for name in OURS:
        print(
            f"{name} / bare_arq = {results['ratio'][name]:.2f}x, "
            f"/ bare_arq_uvloop = {results['ratio_to_uvloop'][name]:.2f}x (medians)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="jobs per run (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per worker (%(default)s)")
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once (default: LOOPS_WORKER_CONCURRENCY's)"
    )
    parser.add_argument(
        "--poll-delay", type=float, help="seconds (default: LOOPS_POLL_INTERVAL_SECONDS's)"
    )
    parser.add_argument(
        "--ordering",
        choices=["on", "off"],
        default="on",
        help="LOOPS_ORDERING of our worker (%(default)s): off measures ordering's cost",
    )
    commands = parser.add_subparsers(dest="command")
    bare = commands.add_parser("bare-arq-worker", help="run the baseline (used internally)")
    bare.add_argument("--redis-url", required=True)
    bare.add_argument("--uvloop", action="store_true", help="run arq on uvloop")
    args = parser.parse_args(argv)

    if args.command == "bare-arq-worker":
        run_bare_worker(args.redis_url, args.concurrency, args.poll_delay, args.uvloop)
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPU cores: one for the worker, one for Redis", file=sys.stderr)
        return 2
    from loops_webhooks.settings import Settings

    defaults = Settings()
    args.concurrency = args.concurrency or defaults.worker_concurrency
    args.poll_delay = args.poll_delay or defaults.poll_interval_seconds
    os.sched_setaffinity(0, {REDIS_CORE})

    with tempfile.TemporaryDirectory(prefix="loops-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "bench_handlers.py").write_text(HANDLERS_MODULE)
        redis_server, redis_url = start_redis(workdir)
        try:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
            for round_ in range(args.rounds):
                for name in CONTENDERS:
                    runs[name].append(
                        measure(name, redis_url, redis_server.pid, workdir, args, round_)
                    )
                    print(f"round {round_ + 1} {name}: {runs[name][-1]['jobs_per_s']:.0f} jobs/s")
        finally:
            redis_server.terminate()
            redis_server.wait(10)

    summary = {
        name: {
            "jobs_per_s_median": statistics.median(run["jobs_per_s"] for run in rounds),
            "jobs_per_s_rounds": [run["jobs_per_s"] for run in rounds],
            "worker_cpu_ms_per_job_median": statistics.median(
                run["worker_cpu_ms_per_job"] for run in rounds
            ),
            "redis_cpu_ms_per_job_median": statistics.median(
                run["redis_cpu_ms_per_job"] for run in rounds
            ),
            "redis_round_trips_per_job": rounds[-1]["redis_round_trips_per_job"],
            "redis_commands_per_job": sum(rounds[-1]["redis_commands_per_job"].values()),
        }
        for name, rounds in runs.items()
    }
    bare_rate = summary["bare_arq"]["jobs_per_s_median"]
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": os.getloadavg(),
        },
        "setup": {
            "events": args.events,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "poll_delay_s": args.poll_delay,
            "ordering": args.ordering,
            "worker_core": WORKER_CORE,
            "redis_core": REDIS_CORE,
            "redis": "dedicated redis-server on loopback, no persistence",
        },
        "summary": summary,
        "ratio": {name: round(summary[name]["jobs_per_s_median"] / bare_rate, 3) for name in OURS},
        "ratio_to_uvloop": {
            name: round(
                summary[name]["jobs_per_s_median"]
                / summary["bare_arq_uvloop"]["jobs_per_s_median"],
                3,
            )
            for name in OURS
        },
        "runs": runs,
    }
    print_table(results)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"worker-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
