"""The embedded development Redis: one real server per data directory, shared and durable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from loops_webhooks.cli import redis_url_for
from loops_webhooks.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from loops_webhooks.settings import Settings

ENSURE_IN_A_NEW_PROCESS = """
import sys
from pathlib import Path
from loops_webhooks.embedded_redis import ensure_embedded_redis
print("URL=" + ensure_embedded_redis(Path(sys.argv[1])))
"""


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data directory whose embedded Redis, if a test started one, is gone afterwards."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    directory = tmp_path / "data"
    yield directory
    stop_embedded_redis(directory)
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int((directory / "redis.pid").read_text()), signal.SIGKILL)


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_the_first_call_starts_a_redis_that_answers(data_dir):
    url = ensure_embedded_redis(data_dir)

    assert answers(url)


def test_the_server_writes_its_port_and_an_append_only_file_in_the_data_directory(data_dir):
    url = ensure_embedded_redis(data_dir)

    assert url == f"redis://127.0.0.1:{(data_dir / 'redis.port').read_text().strip()}/0"
    with redis.Redis.from_url(url) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert Path(client.config_get("dir")["dir"]) == data_dir.resolve()


def test_a_second_call_finds_the_running_server(data_dir):
    first = ensure_embedded_redis(data_dir)

    assert ensure_embedded_redis(data_dir) == first


def test_two_processes_starting_at_once_share_one_server(data_dir):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", ENSURE_IN_A_NEW_PROCESS, str(data_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    urls = []
    for process in processes:
        stdout, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        urls += [line.removeprefix("URL=") for line in stdout.splitlines() if "URL=" in line]

    assert len(urls) == 2
    assert urls[0] == urls[1]
    assert answers(urls[0])


def test_starting_logs_that_it_is_for_development_only(data_dir):
    with capture_logs() as logs:
        ensure_embedded_redis(data_dir)

    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert "development only" in warning["event"]
    assert "REDIS_URL" in warning["event"]


def test_finding_a_running_server_logs_nothing(data_dir):
    ensure_embedded_redis(data_dir)

    with capture_logs() as logs:
        ensure_embedded_redis(data_dir)

    assert logs == []


def test_a_stale_port_file_is_replaced_by_a_new_server(data_dir, free_port):
    data_dir.mkdir()
    (data_dir / "redis.port").write_text(f"{free_port()}\n")

    url = ensure_embedded_redis(data_dir)

    assert answers(url)


def test_stop_shuts_the_server_down(data_dir):
    url = ensure_embedded_redis(data_dir)

    assert stop_embedded_redis(data_dir) is True
    assert not answers(url)
    assert not (data_dir / "redis.port").exists()


def test_stop_says_so_when_no_server_runs(data_dir):
    assert stop_embedded_redis(data_dir) is False


def test_data_survives_a_stop_and_a_restart(data_dir):
    with redis.Redis.from_url(ensure_embedded_redis(data_dir)) as client:
        client.set("loops:test", b"kept")
    stop_embedded_redis(data_dir)

    with redis.Redis.from_url(ensure_embedded_redis(data_dir)) as client:
        assert client.get("loops:test") == b"kept"


def test_without_redis_url_the_cli_uses_the_data_directorys_embedded_redis(data_dir):
    url = redis_url_for(Settings(data_dir=data_dir))

    assert url == ensure_embedded_redis(data_dir)
    assert answers(url)


def test_with_redis_url_the_cli_uses_it_and_starts_nothing(data_dir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6379/0")

    url = redis_url_for(Settings(data_dir=data_dir))

    assert url == "redis://redis.internal:6379/0"
    assert not data_dir.exists()
