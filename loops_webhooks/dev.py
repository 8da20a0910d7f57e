"""``loops-webhooks dev``: the receiver, a worker and the dashboard, for a newcomer's first run.

Both run as child processes, exactly as ``serve`` and ``worker`` run in production, on the
data directory's embedded Redis unless ``REDIS_URL`` is set. Ctrl-C (or SIGTERM) stops both
gracefully; what was received is in Redis and is processed after the next start.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["run_dev"]

STOP_TIMEOUT_SECONDS = 30.0


def run_dev(
    *,
    redis_url: str,
    host: str,
    port: int,
    webhook_path: str,
    secret_configured: bool,
    worker_options: list[str],
    dashboard_port: int,
    dashboard_token_configured: bool,
) -> int:
    env = dict(os.environ, REDIS_URL=redis_url)
    env.setdefault("LOOPS_LOG_FORMAT", "console")
    url = f"http://{host}:{port}{webhook_path}"
    print(f"loops-webhooks dev: receiver at {url}, worker with LOOPS_HANDLERS", flush=True)
    if secret_configured:
        print("  signing secret: LOOPS_WEBHOOK_SECRET", flush=True)
        print(f"  try: loops-webhooks send checkout.session.completed --url {url}", flush=True)
    else:
        generated = "whsec_dev_" + secrets.token_hex(16)
        env["LOOPS_WEBHOOK_SECRET"] = generated
        print(f"  no LOOPS_WEBHOOK_SECRET set; generated one for this session: {generated}")
        print(
            "  try: loops-webhooks send checkout.session.completed "
            f"--url {url} --secret {generated}",
            flush=True,
        )
    if not dashboard_token_configured:
        env["LOOPS_DASHBOARD_TOKEN"] = secrets.token_urlsafe(24)
    dashboard_url = f"http://{host}:{dashboard_port}/"
    token = env["LOOPS_DASHBOARD_TOKEN"]
    if dashboard_token_configured:
        print(f"  dashboard at {dashboard_url} (token: LOOPS_DASHBOARD_TOKEN)", flush=True)
    else:
        print(f"  dashboard at {dashboard_url} (token for this session: {token})", flush=True)
    command = [sys.executable, "-m", "loops_webhooks.cli"]
    children = [
        subprocess.Popen([*command, "serve", "--host", host, "--port", str(port)], env=env),
        subprocess.Popen([*command, "worker", *worker_options], env=env),
        subprocess.Popen(
            [*command, "dashboard", "--host", host, "--port", str(dashboard_port)], env=env
        ),
    ]
    interrupted = False

    def stop_children() -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        stop_children()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not interrupted and all(child.poll() is None for child in children):
            time.sleep(0.2)
        if not interrupted:
            print(
                "loops-webhooks dev: a child process exited; stopping the others", file=sys.stderr
            )
        stop_children()
        _wait_all(children)
        return 0 if interrupted else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_all(children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
