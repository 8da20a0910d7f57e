"""What every benchmark needs from the operating system: free ports, servers pinned to one
core, their CPU time and memory. Loopback only; every process started is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Return once something listens on ``127.0.0.1:port``; exit if ``process`` dies first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            output = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"{process.args!r} exited with {process.returncode}:\n{output}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listened on port {port} in {STARTUP_TIMEOUT_SECONDS}s")
        time.sleep(0.05)


@contextlib.contextmanager
def pinned_process(
    command: Sequence[str], core: int, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` on one CPU core only (every thread it starts inherits the mask).

    No LOOPS_* or REDIS_URL of the caller's environment reaches it: only ``env``.
    """
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LOOPS_") and name != "REDIS_URL"
    }
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env={**inherited, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now (``VmRSS``) and at its peak so far (``VmHWM``), in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = round(int(rest.split()[0]) / 1024, 1)
    return {"rss_mib": values["VmRSS"], "peak_rss_mib": values["VmHWM"]}
