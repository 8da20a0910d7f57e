"""Logs and metrics as an operator sees them: real requests, real handler runs, real scrapes;
and the Grafana board and alert rules of deploy/ querying only metrics those scrapes show."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from loops_webhooks.embedded_redis import stop_embedded_redis
from loops_webhooks.ingest.app import create_app
from loops_webhooks.settings import RECEIVER_METRICS_PORT, WORKER_METRICS_PORT, Settings
from tests.support.loops_sender import WEBHOOK_SECRET, LoopsSender
from tests.support.processes import StartLoopsWebhooks
from tests.support.waiting import eventually

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
WEBHOOK_PATH = "/webhooks/loops"

HANDLERS_MODULE = """
from loops_webhooks.handlers import Reject, Router

router = Router()


@router.on("checkout.session.completed", name="ok")
async def ok(event, ctx):
    ctx.log.info("handled")


@router.on("checkout.session.failed", name="refuses")
async def refuses(event, ctx):
    raise Reject("refused on purpose")
"""


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


class Receiver:
    """A receiver built by ``create_app``: its webhook port (``client``) and metrics URL."""

    def __init__(self, client: TestClient, metrics_url: str) -> None:
        self.client = client
        self.metrics_url = metrics_url


@pytest.fixture
async def receiver(redis_url: str, free_port: Callable[[], int]) -> AsyncIterator[Receiver]:
    metrics_port = free_port()
    settings = Settings(webhook_secret=WEBHOOK_SECRET, metrics_port=metrics_port)
    client = TestClient(TestServer(create_app(settings, redis_url), host="127.0.0.1"))
    await client.start_server()
    yield Receiver(client, f"http://127.0.0.1:{metrics_port}/metrics")
    await client.close()


async def test_receiver_metrics_count_requests_by_outcome(
    receiver: Receiver, loops: LoopsSender
) -> None:
    before = await scrape(receiver.metrics_url)
    body = loops.event()

    for _ in range(2):
        await receiver.client.post(WEBHOOK_PATH, data=body, headers=loops.headers(body))
    await receiver.client.post(WEBHOOK_PATH, data=body, headers={"loops-signature": "0" * 64})
    unsigned_junk = b"not json"
    await receiver.client.post(
        WEBHOOK_PATH, data=unsigned_junk, headers=loops.headers(unsigned_junk)
    )
    after = await scrape(receiver.metrics_url)

    def grew(outcome: str) -> float:
        name = "loops_webhooks_requests_total"
        return sample(after, name, outcome=outcome) - sample(before, name, outcome=outcome)

    assert grew("accepted") == 1
    assert grew("duplicate") == 1
    assert grew("invalid_signature") == 1
    assert grew("invalid_payload") == 1
    assert (
        sample(after, "loops_webhooks_request_duration_seconds_count")
        - sample(before, "loops_webhooks_request_duration_seconds_count")
        == 4
    )
    assert sample(after, "loops_webhooks_redis_write_duration_seconds_count") > sample(
        before, "loops_webhooks_redis_write_duration_seconds_count"
    )


async def test_the_webhook_port_does_not_serve_metrics(receiver: Receiver) -> None:
    response = await receiver.client.get("/metrics")

    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_serve_exposes_only_receiver_metrics_on_the_metrics_port(
    redis_url: str, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_METRICS_PORT": str(metrics_port),
    }
    # The metrics server starts in the app's startup, before the webhook port listens.
    start_loops_webhooks("serve", "--port", str(port), env=env, port=port)

    text = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    webhook_port_metrics = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(webhook_port_metrics) as response:
        assert response.status == 404

    assert 'loops_webhooks_requests_total{outcome="accepted"} 0.0' in text
    assert "loops_webhooks_handler_runs" not in text
    assert "loops_webhooks_queue_depth" not in text


async def test_one_canonical_log_line_per_request_with_its_outcome(
    receiver: Receiver, loops: LoopsSender
) -> None:
    body = loops.event("evt_logged")

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await receiver.client.post(WEBHOOK_PATH, data=body, headers=loops.headers(body))

    requests = [entry for entry in logs if entry["event"] == "request"]
    assert len(requests) == 1
    assert requests[0]["outcome"] == "accepted"
    assert requests[0]["status"] == 200
    assert requests[0]["event_id"] == "evt_logged"
    assert requests[0]["duration_ms"] >= 0


def test_worker_metrics_count_handler_runs_and_dead_letters_after_real_runs(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    (tmp_path / "observed_handlers.py").write_text(HANDLERS_MODULE)
    metrics_port, receiver_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "observed_handlers:router",
        "LOOPS_METRICS_PORT": str(metrics_port),
        "LOOPS_LOG_FORMAT": "json",
        "PYTHONPATH": str(tmp_path),
    }
    worker = start_loops_webhooks("worker", env=env, port=metrics_port)
    receiver = start_loops_webhooks(
        "serve", "--port", str(receiver_port), env=env, port=receiver_port
    )
    url = f"{receiver.base_url}{WEBHOOK_PATH}"
    for event_type, count in (("checkout.session.completed", 3), ("checkout.session.failed", 2)):
        sent = subprocess.run(
            [LOOPS_WEBHOOKS, "send", event_type, "--url", url, "--count", str(count)],
            env={"PATH": "/usr/bin:/bin", "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr

    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        text = asyncio.run(scrape(metrics_url))
        if sample(text, "loops_webhooks_dead_letter_queue_size") == 2:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.5)

    runs = "loops_webhooks_handler_runs_total"
    assert sample(text, runs, handler="ok", outcome="done") == 3
    assert sample(text, runs, handler="refuses", outcome="dead_letter") == 2
    assert sample(text, "loops_webhooks_dead_letters_total", reason="rejected") == 2
    assert sample(text, "loops_webhooks_handler_duration_seconds_count", handler="ok") == 3
    assert sample(text, "loops_webhooks_queue_depth") == 0
    assert sample(text, "loops_webhooks_oldest_pending_event_age_seconds") == 0
    assert "event_id" not in text

    outcome_lines = [
        orjson.loads(line)
        for line in worker.output().splitlines()
        if line.startswith("{") and '"handler"' in line and '"outcome"' in line
    ]
    assert sorted(line["outcome"] for line in outcome_lines) == ["dead_letter"] * 2 + ["done"] * 3
    dead = [line for line in outcome_lines if line["outcome"] == "dead_letter"]
    assert all(line["level"] == "error" for line in dead)
    assert all({"event_id", "event_type", "attempt", "duration_ms"} <= set(line) for line in dead)


async def test_worker_healthz_answers_while_it_runs(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    start_loops_webhooks(
        "worker", env={"REDIS_URL": redis_url, "LOOPS_METRICS_PORT": str(port)}, port=port
    )

    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200


def test_the_signing_secret_never_appears_in_logs(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
    loops: LoopsSender,
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},whsec_second_secret",
        "LOOPS_LOG_LEVEL": "debug",
    }
    receiver = start_loops_webhooks("serve", "--port", str(port), env=env, port=port)
    worker = start_loops_webhooks(
        "worker", env={**env, "LOOPS_METRICS_PORT": str(metrics_port)}, port=metrics_port
    )
    url = f"{receiver.base_url}{WEBHOOK_PATH}"
    sent = subprocess.run(
        [LOOPS_WEBHOOKS, "send", "checkout.session.completed", "--url", url, "--count", "3"],
        env={"PATH": "/usr/bin:/bin", "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    bad = subprocess.run(
        [LOOPS_WEBHOOKS, "send", "checkout.session.completed", "--url", url,
         "--secret", "not-the-secret"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    invalid_config = subprocess.run(
        [LOOPS_WEBHOOKS, "serve"],
        env={**env, "LOOPS_MAX_BODY_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    time.sleep(1.0)
    receiver.stop()
    worker.stop()

    assert sent.returncode == 0 and bad.returncode == 1
    assert invalid_config.returncode == 2
    everything = "".join(
        [receiver.output(), worker.output(), sent.stdout, sent.stderr, bad.stdout, bad.stderr,
         invalid_config.stderr]
    )  # fmt: skip
    assert "order fulfilled" in everything
    assert WEBHOOK_SECRET not in everything
    assert "whsec_second_secret" not in everything


# --- the deploy files' queries: deploy/grafana and deploy/prometheus -----------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "loops-webhooks.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
REDIS_EXPORTER_METRICS = {"redis_memory_used_bytes", "redis_memory_max_bytes"}
"""What the Redis-memory alert reads from redis_exporter, which the README says to run."""

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "inf", "nan"}  # fmt: skip
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label names and values,
    ranges, keywords and Grafana's ``$variables`` left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for panel in container.get("panels", []):
            yield panel
            yield from panels(panel)

    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"]


def alert_expressions() -> Iterator[str]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def exported(text: str) -> tuple[set[str], set[str]]:
    """(every sample name, every histogram's base name) of a Prometheus exposition."""
    samples: set[str] = set()
    histograms: set[str] = set()
    for family in text_string_to_metric_families(text):
        samples.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            histograms.add(family.name)
    return samples, histograms


def test_the_dashboard_and_the_alert_rules_query_only_metrics_the_service_exports(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    (tmp_path / "monitored_handlers.py").write_text(HANDLERS_MODULE)
    metrics_url = "http://127.0.0.1:{}/metrics".format
    receiver_port, receiver_metrics, worker_metrics = free_port(), free_port(), free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "monitored_handlers:router",
        "PYTHONPATH": str(tmp_path),
    }
    start_loops_webhooks("worker", env={**env, "LOOPS_METRICS_PORT": str(worker_metrics)},
                         port=worker_metrics)  # fmt: skip
    receiver = start_loops_webhooks(
        "serve", "--port", str(receiver_port),
        env={**env, "LOOPS_METRICS_PORT": str(receiver_metrics)}, port=receiver_port,
    )  # fmt: skip
    for event_type in ("checkout.session.completed", "checkout.session.failed"):
        sent = subprocess.run(
            [LOOPS_WEBHOOKS, "send", event_type, "--url", f"{receiver.base_url}{WEBHOOK_PATH}"],
            env={"PATH": "/usr/bin:/bin", "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 30
    while 'outcome="dead_letter"' not in (
        worker_text := asyncio.run(scrape(metrics_url(worker_metrics)))
    ):
        assert time.monotonic() < deadline, worker_text
        time.sleep(0.5)
    receiver_text = asyncio.run(scrape(metrics_url(receiver_metrics)))
    samples, histograms = exported(worker_text + receiver_text)

    def unknown(names: set[str]) -> set[str]:
        return {
            name
            for name in names
            if name not in samples and HISTOGRAM_SUFFIX.sub("", name) not in histograms
        }

    dashboard = json.loads(DASHBOARD.read_text())
    board = set().union(*map(metric_names, dashboard_expressions(dashboard)))
    rules = set().union(*map(metric_names, alert_expressions()))

    assert {"loops_webhooks_requests_total", "loops_webhooks_handler_runs_total",
            "loops_webhooks_queue_depth", "loops_webhooks_dead_letter_queue_size",
            "loops_webhooks_redis_write_duration_seconds_bucket"} <= board  # fmt: skip
    assert unknown(board) == set()
    assert unknown(rules) == REDIS_EXPORTER_METRICS


async def metrics_answer(url: str) -> str | None:
    """The text of ``url`` if it answers 200 now, else None."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


def test_serve_and_a_worker_on_one_host_serve_metrics_on_their_own_default_ports(
    tmp_path: Path, redis_url: str, free_port: Callable[[], int]
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOOPS_")},
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PYTHONUNBUFFERED": "1",
    }  # LOOPS_METRICS_PORT unset: the defaults, as in two terminals after the quick start
    logs = {"serve": tmp_path / "serve.log", "worker": tmp_path / "worker.log"}
    commands = {"serve": ["serve", "--port", str(free_port())], "worker": ["worker"]}
    processes = []
    for name, arguments in commands.items():
        with logs[name].open("wb") as log_file:
            process = subprocess.Popen(
                [LOOPS_WEBHOOKS, *arguments], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
            processes.append(process)
    urls = [
        f"http://127.0.0.1:{RECEIVER_METRICS_PORT}/metrics",
        f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics",
    ]
    deadline = time.monotonic() + 30
    try:
        while None in (texts := [asyncio.run(metrics_answer(url)) for url in urls]):
            assert time.monotonic() < deadline, [path.read_text() for path in logs.values()]
            time.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)

    receiver_text, worker_text = texts
    assert "loops_webhooks_requests_total" in str(receiver_text)
    assert "loops_webhooks_queue_depth" in str(worker_text)
    assert not any("cannot serve metrics" in path.read_text() for path in logs.values())
    assert not {RECEIVER_METRICS_PORT, WORKER_METRICS_PORT} & set(range(9100, 10000))


async def test_a_second_worker_on_a_busy_metrics_port_runs_on_and_says_which_setting_to_change(
    redis_url: str, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    metrics_port = free_port()
    env = {"REDIS_URL": redis_url, "LOOPS_METRICS_PORT": str(metrics_port)}
    first = start_loops_webhooks("worker", env=env, port=metrics_port)
    second = start_loops_webhooks("worker", env=env)

    async def started() -> bool:
        return "worker started" in second.output()

    await eventually(started, within=30, what="the second worker started", details=second.output)
    await asyncio.sleep(1.0)

    assert second.process.poll() is None, second.output()
    [complaint] = [line for line in second.output().splitlines() if "cannot serve metrics" in line]
    assert "LOOPS_METRICS_PORT" in complaint
    assert str(metrics_port) in complaint
    assert await metrics_answer(f"http://127.0.0.1:{metrics_port}/metrics") is not None
    assert "cannot serve metrics" not in first.output()


def test_dev_logs_for_the_console_with_one_settings_line_and_says_when_each_process_stops(
    tmp_path: Path, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    secrets = {
        "LOOPS_WEBHOOK_SECRET": "whsec_never_in_the_log",
        "LOOPS_DASHBOARD_TOKEN": "dashboard-token-never-in-the-log",
        "LOOPS_REDIS_SENTINEL_PASSWORD": "sentinel-password-never-in-the-log",
    }
    env = {**secrets, "LOOPS_DATA_DIR": str(tmp_path / "data")}  # the embedded Redis
    port = free_port()
    try:
        dev = start_loops_webhooks("dev", "--port", str(port), "--dashboard-port",
                                   str(free_port()), env=env, port=port)  # fmt: skip
        deadline = time.monotonic() + 30
        while "worker started" not in dev.output() or "dashboard listening" not in dev.output():
            assert time.monotonic() < deadline, dev.output()
            time.sleep(0.1)
        assert dev.stop() == 0
    finally:
        stop_embedded_redis(tmp_path / "data")

    lines = dev.output().splitlines()
    assert not [line for line in lines if line.lstrip().startswith("{")], dev.output()
    [settings] = [line for line in lines if "effective settings" in line]
    assert "LOOPS_WEBHOOK_SECRET': '***'" in settings
    assert not [value for value in secrets.values() if value in dev.output()]
    [embedded] = [line for line in lines if "started the embedded Redis" in line]
    assert "[warning" in embedded
    for process in ("receiver", "dashboard", "worker"):
        assert any(f"{process} stopping" in line and "SIGTERM" in line for line in lines)
        assert any(f"{process} stopped" in line for line in lines)
    assert any("dev stopping" in line and "signal=SIGTERM" in line for line in lines)
    assert "dev stopped" in lines[-1]


@pytest.mark.parametrize("command", ["serve", "worker", "dashboard"])
def test_each_long_running_command_logs_its_settings_once_where_it_listens_and_why_it_stops(
    command: str,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_DASHBOARD_TOKEN": "a-dashboard-token-of-some-length",
        "LOOPS_LOG_FORMAT": "json",
    }
    if command == "worker":  # it listens on its metrics port only
        env["LOOPS_METRICS_PORT"] = str(port)
    arguments = [] if command == "worker" else ["--port", str(port)]
    process = start_loops_webhooks(command, *arguments, env=env, port=port)
    role = {"serve": "receiver"}.get(command, command)
    started = "worker started" if command == "worker" else f"{role} listening"
    deadline = time.monotonic() + 30
    while started not in process.output():
        assert time.monotonic() < deadline, process.output()
        time.sleep(0.1)

    assert process.stop() == 0

    lines = [orjson.loads(line) for line in process.output().splitlines()]
    events = [line["event"] for line in lines]
    assert events.count("effective settings") == 1
    assert events[-2:] == [f"{role} stopping", f"{role} stopped"]
    assert lines[-2]["signal"] == "SIGTERM"
    if command != "worker":
        [listening] = [line for line in lines if line["event"] == started]
        expected = {"serve": "/webhooks/loops", "dashboard": "/"}[command]
        assert listening["url"] == f"http://127.0.0.1:{port}{expected}"
