"""A Sentinel group on loopback: a primary, two replicas and three Sentinels, as in
production's ``deploy/k8s/redis-ha``, which a test may fail over by killing the primary."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import redis as redis_sync

from tests.support.redis_server import STARTUP_SECONDS, RedisServer, redis_server_binary


class SentinelServer(RedisServer):
    """One Sentinel (the same ``redis-server`` binary, in Sentinel mode) watching ``primary``.

    Failure is noticed after ``DOWN_AFTER_MS`` (production: a few seconds), so a failover
    takes a few seconds here rather than the default's half a minute.
    """

    DOWN_AFTER_MS = 1000
    FAILOVER_TIMEOUT_MS = 3000

    def __init__(self, data_dir: Path, *, master_name: str, primary_port: int) -> None:
        super().__init__(data_dir, appendfsync=None)
        self.master_name = master_name
        self.primary_port = primary_port

    def _command(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"  # Sentinel rewrites it: one file per process
        config.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {self.data_dir}\n"
            f"logfile {self.data_dir / 'sentinel.log'}\ndaemonize no\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.master_name} {self.FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {self.master_name} 2\n"
        )
        return [str(redis_server_binary()), str(config), "--sentinel"]


class SentinelGroup:
    """A primary, two replicas and three Sentinels on loopback, all durable as in production.

    ``url`` is the ``redis+sentinel://`` address the services get; ``primary_url()`` asks the
    Sentinels which server is the primary now, for the suite's own inspection.
    """

    MASTER_NAME = "loops"

    def __init__(self, root: Path) -> None:
        self.primary = RedisServer(root / "primary", appendfsync="always")
        self.replicas = [
            RedisServer(root / f"replica{n}", appendfsync="always", replica_of=self.primary.port)
            for n in (1, 2)
        ]
        self.sentinels = [
            SentinelServer(
                root / f"sentinel{n}", master_name=self.MASTER_NAME, primary_port=self.primary.port
            )
            for n in (1, 2, 3)
        ]
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{self.MASTER_NAME}/0"

    def start(self) -> None:
        """Start everything; return once both replicas are in sync and every Sentinel knows
        both replicas and both other Sentinels (without that, no failover could happen)."""
        for server in [self.primary, *self.replicas, *self.sentinels]:
            server.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._ready():
            if time.monotonic() > deadline:
                raise TimeoutError("the replicas and Sentinels did not find one another")
            time.sleep(0.1)

    def _ready(self) -> bool:
        for replica in self.replicas:
            with redis_sync.Redis.from_url(replica.url, socket_timeout=1) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinels:
            with redis_sync.Redis.from_url(sentinel.url, socket_timeout=1) as client:
                if len(client.execute_command("SENTINEL", "REPLICAS", self.MASTER_NAME)) < 2:
                    return False
                if len(client.execute_command("SENTINEL", "SENTINELS", self.MASTER_NAME)) < 2:
                    return False
        return True

    def primary_url(self) -> str:
        """The current primary's plain URL, as the Sentinels see it."""
        for sentinel in self.sentinels:
            with (
                contextlib.suppress(redis_sync.RedisError),
                redis_sync.Redis.from_url(sentinel.url, socket_timeout=1) as client,
            ):
                host, port = client.sentinel_get_master_addr_by_name(self.MASTER_NAME)
                return f"redis://{host.decode()}:{port}/0"
        raise RuntimeError("no Sentinel answers")

    def kill_primary(self) -> None:
        """SIGKILL the primary of the moment (it stays down)."""
        current = self.primary_url()
        for server in [self.primary, *self.replicas]:
            if server.url == current:
                server.kill()
                return
        raise RuntimeError(f"the primary {current} is none of the group's servers")

    def close(self) -> None:
        for server in [*self.sentinels, self.primary, *self.replicas]:
            server.close()
