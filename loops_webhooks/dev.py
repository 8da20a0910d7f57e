"""``loops-webhooks dev``: the receiver, a worker and the dashboard, for a newcomer's first run.

Both run as child processes, exactly as ``serve`` and ``worker`` run in production, on the
data directory's embedded Redis unless ``REDIS_URL`` is set. The worker serves the metrics
port; the receiver's metrics server is off (both on one host cannot share the port). Ctrl-C
(or SIGTERM) stops both gracefully; what was received is in Redis and is processed after the
next start. Without ``LOOPS_WEBHOOK_SECRET``, a generated secret is kept in the data
directory (mode 0600) and reused by the next ``dev``, so a pasted ``send`` command keeps
working across restarts.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

__all__ = ["dev_secret_file", "kept_dev_secret", "run_dev"]

STOP_TIMEOUT_SECONDS = 30.0
SECRET_FILE = "dev-webhook-secret"


def run_dev(
    *,
    redis_url: str,
    host: str,
    port: int,
    webhook_path: str,
    secret_configured: bool,
    data_dir: Path,
    send_command: str,
    worker_options: list[str],
    dashboard_port: int,
    dashboard_token_configured: bool,
) -> int:
    """``send_command``: how the user runs ``loops-webhooks`` from here, for the command
    printed to paste."""
    env = dict(os.environ, REDIS_URL=redis_url)
    env.setdefault("LOOPS_LOG_FORMAT", "console")
    url = f"http://{host}:{port}{webhook_path}"
    handlers = worker_options[worker_options.index("--handlers") + 1]
    print(f"loops-webhooks dev: receiver at {url}, worker with handlers {handlers}", flush=True)
    send = f"{send_command} send checkout.session.completed --url {url}"
    if secret_configured:
        print("  signing secret: LOOPS_WEBHOOK_SECRET", flush=True)
        print(f"  try: {send}", flush=True)
    else:
        secret_file = dev_secret_file(data_dir)
        generated = _dev_secret(secret_file)
        env["LOOPS_WEBHOOK_SECRET"] = generated
        print(f"  no LOOPS_WEBHOOK_SECRET set; using the development secret in {secret_file}")
        print(f"  try: {send} --secret {generated}", flush=True)
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
        subprocess.Popen(
            [*command, "serve", "--host", host, "--port", str(port)],
            env={**env, "LOOPS_METRICS_PORT": "0"},
        ),
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


def dev_secret_file(data_dir: Path) -> Path:
    """Where ``dev`` keeps its generated signing secret: ``send`` reads it from there too."""
    return data_dir / SECRET_FILE


def kept_dev_secret(path: Path) -> str | None:
    """The development signing secret kept at ``path``, if ``dev`` made one."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _dev_secret(path: Path) -> str:
    """The development signing secret kept at ``path``, created (mode 0600) on first use."""
    kept = kept_dev_secret(path)
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = "whsec_dev_" + secrets.token_hex(16)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as secret_file:
        secret_file.write(generated + "\n")
    path.chmod(0o600)
    return generated


def _wait_all(children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
