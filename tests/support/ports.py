"""Loopback ports: one nobody listens on, and waiting until somebody does."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

STARTUP_SECONDS = 30.0


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts connections on ``127.0.0.1:port`` now."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_for_port(
    port: int,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    *,
    within: float = STARTUP_SECONDS,
) -> None:
    """Return once something listens on ``127.0.0.1:port``; fail, with the end of the
    process's ``log``, if ``process`` exits first or nothing listens ``within`` seconds."""

    def output() -> str:
        return log.read_text(errors="replace")[-3000:] if log is not None else ""

    deadline = time.monotonic() + within
    while not listening(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening on "
                f"{port}; its output:\n{output()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listened on 127.0.0.1:{port} in {within:g}s\n{output()}")
        time.sleep(0.05)
