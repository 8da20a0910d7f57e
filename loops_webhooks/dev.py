"""``loops-webhooks dev``: the receiver, a worker and the dashboard, for a newcomer's first run.

All three run as child processes, exactly as ``serve``, ``worker`` and ``dashboard`` run in
production, on the data directory's embedded Redis unless ``REDIS_URL`` is set. The worker
serves the metrics port; the receiver's metrics server is off. The children's logs are in
the format ``dev`` logs in (console unless ``LOOPS_LOG_FORMAT`` says otherwise), and only
``dev`` logs the settings.

The worker is restarted whenever a Python file under the project directory (or in the
package of a handler module installed elsewhere) changes, so a fix followed by a replay runs
the fixed code. The watching is watchfiles' (inotify on Linux, with its debouncing and its
handling of editors' atomic saves); only Python files count, so the logs, a local database
or the effects a handler writes into the project do not restart it. A worker that cannot
start (a syntax error in the edited handler) is logged and started again at the next change;
``dev`` itself keeps running. Ctrl-C (or SIGTERM) stops all three gracefully; what was
received is in Redis and is processed after the next start. Without
``LOOPS_WEBHOOK_SECRET``, a generated secret is kept in the data directory (mode 0600) and
reused by the next ``dev``, so a pasted ``send`` command keeps working across restarts.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType

import structlog
import watchfiles

from loops_webhooks.dev_secret import dev_secret, dev_secret_file
from loops_webhooks.handlers import Router

__all__ = ["run_dev", "watched_directories"]

log = structlog.get_logger(logger_name="loops_webhooks.dev")

STOP_TIMEOUT_SECONDS = 30.0
CHECK_CHILDREN_MILLISECONDS = 200
"""How often the wait for file changes stops to check that the children still run."""
LISTEN_TIMEOUT_SECONDS = 60.0
"""How long the receiver and the dashboard may take to listen (the banner waits for them)."""
LISTEN_POLL_SECONDS = 0.1


def watched_directories(project_dir: Path, router: Router) -> list[Path]:
    """The project directory, and the package directory of each handler module outside it
    (an installed package). A top-level module outside the project has no directory of its
    own to watch (its parent holds every installed package), so it is not watched."""
    project_dir = project_dir.resolve()
    directories = [project_dir]
    for handler in router.handlers:
        module = sys.modules.get(getattr(handler.func, "__module__", None) or "")
        location = getattr(module, "__file__", None)
        if module is None or location is None or not module.__package__:
            continue
        directory = Path(location).resolve().parent
        if not any(directory.is_relative_to(watched) for watched in directories):
            directories.append(directory)
    return directories


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
    log_format: str,
    child_command: list[str],
    watched: Sequence[Path],
) -> int:
    """``send_command``: how the user runs ``loops-webhooks`` from here, for the command
    printed to paste; ``child_command``: how to run it for a child (``serve``, ``worker``
    and ``dashboard`` follow); ``watched``: the directories whose Python files restart the
    worker."""
    env = dict(os.environ, REDIS_URL=redis_url, LOOPS_LOG_FORMAT=log_format)
    url = f"http://{host}:{port}{webhook_path}"
    handlers = worker_options[worker_options.index("--handlers") + 1]
    banner = [f"loops-webhooks dev: receiver at {url}, worker with handlers {handlers}"]
    send = f"{send_command} send checkout.session.completed --url {url}"
    if secret_configured:
        banner += ["  signing secret: LOOPS_WEBHOOK_SECRET", f"  try: {send}"]
    else:
        secret_file = dev_secret_file(data_dir)
        generated = dev_secret(secret_file)
        env["LOOPS_WEBHOOK_SECRET"] = generated
        banner.append(
            f"  no LOOPS_WEBHOOK_SECRET set; using the development secret in {secret_file}"
        )
        banner.append(f"  try: {send} --secret {generated}")
    if not dashboard_token_configured:
        env["LOOPS_DASHBOARD_TOKEN"] = secrets.token_urlsafe(24)
    dashboard_url = f"http://{host}:{dashboard_port}/"
    token = env["LOOPS_DASHBOARD_TOKEN"]
    if dashboard_token_configured:
        banner.append(f"  dashboard at {dashboard_url} (token: LOOPS_DASHBOARD_TOKEN)")
    else:
        banner.append(f"  dashboard at {dashboard_url} (token for this session: {token})")
    watched_list = ", ".join(str(directory) for directory in watched)
    banner.append(f"  the worker restarts when a Python file changes in {watched_list}")

    command = child_command

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*command, "worker", *worker_options], env=env)

    others = {
        "receiver": subprocess.Popen(
            [*command, "serve", "--host", host, "--port", str(port)],
            env={**env, "LOOPS_METRICS_PORT": "0"},
        ),
        "dashboard": subprocess.Popen(
            [*command, "dashboard", "--host", host, "--port", str(dashboard_port)], env=env
        ),
    }
    worker = start_worker()
    stop = threading.Event()
    stopped_by: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker_exit_logged = False
    try:
        failure = _wait_listening(
            others, host, {"receiver": port, "dashboard": dashboard_port}, stop
        )
        if not failure and not stop.is_set():
            print("\n".join(banner), flush=True)
            for changes in watchfiles.watch(
                *watched,
                watch_filter=watchfiles.PythonFilter(ignore_paths=[data_dir.resolve()]),
                stop_event=stop,
                yield_on_timeout=True,
                rust_timeout=CHECK_CHILDREN_MILLISECONDS,
                raise_interrupt=False,
            ):
                if stop.is_set():
                    break
                exited = [name for name, child in others.items() if child.poll() is not None]
                if exited:
                    failure = f"the {exited[0]} exited with code {others[exited[0]].returncode}"
                    break
                if worker.poll() is not None and not worker_exit_logged:
                    worker_exit_logged = True
                    log.error(
                        "the worker exited (its error is above); dev starts it again when a "
                        "Python file changes",
                        exit_code=worker.returncode,
                    )
                if changes:
                    log.info("restarting the worker", changed=_shown(changes, watched))
                    _stop_all([worker])
                    worker = start_worker()
                    worker_exit_logged = False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        log.info("dev stopping", signal=stopped_by[0])
    else:
        log.error("dev stopping", reason=failure or "the file watcher ended")
    _stop_all([*others.values(), worker])
    log.info("dev stopped")
    return 0 if stopped_by else 1


def _wait_listening(
    children: dict[str, subprocess.Popen[bytes]],
    host: str,
    ports: dict[str, int],
    stop: threading.Event,
) -> str:
    """Wait until each child accepts connections on its port; "" then, else why not (a
    child exited: its own one-line error is above; or it took ``LISTEN_TIMEOUT_SECONDS``).
    Returns "" at once when ``stop`` is set."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_SECONDS
    waiting = dict(ports)
    while waiting and not stop.is_set():
        for name, child_port in list(waiting.items()):
            if children[name].poll() is not None:
                return f"the {name} exited with code {children[name].returncode}"
            try:
                socket.create_connection((host, child_port), timeout=1).close()
            except OSError:
                continue
            del waiting[name]
        if waiting and time.monotonic() > deadline:
            return f"the {', '.join(waiting)} did not listen within {LISTEN_TIMEOUT_SECONDS:g} s"
        stop.wait(LISTEN_POLL_SECONDS)
    return ""


def _shown(changes: Iterable[tuple[watchfiles.Change, str]], watched: Sequence[Path]) -> list[str]:
    """The changed files, relative to the watched directory they are in, sorted."""
    shown = set()
    for _, changed in changes:
        path = Path(changed)
        base = next((root for root in watched if path.is_relative_to(root)), None)
        shown.add(str(path.relative_to(base)) if base is not None else changed)
    return sorted(shown)


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every child still running, then wait for all of them (a child still
    running after ``STOP_TIMEOUT_SECONDS`` is killed)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
