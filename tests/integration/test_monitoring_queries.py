"""The Grafana board and the alert rules query only metrics the service exports: the names
come from real ``/metrics`` scrapes of a receiver and a worker that handled real events."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WEBHOOK_SECRET
from tests.integration.conftest import StartLoopsWebhooks

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "loops-webhooks.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
REDIS_EXPORTER_METRICS = {"redis_memory_used_bytes", "redis_memory_max_bytes"}
"""What the Redis-memory alert reads from redis_exporter, which the README says to run."""

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


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_the_dashboard_and_the_alert_rules_query_only_metrics_the_service_exports(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    (tmp_path / "monitored_handlers.py").write_text(HANDLERS_MODULE)
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
            [LOOPS_WEBHOOKS, "send", event_type, "--url", f"{receiver.base_url}/webhooks/loops"],
            env={"PATH": "/usr/bin:/bin", "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 30
    while 'outcome="dead_letter"' not in (worker_text := scrape(worker_metrics)):
        assert time.monotonic() < deadline, worker_text
        time.sleep(0.5)
    samples, histograms = exported(worker_text + scrape(receiver_metrics))

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
