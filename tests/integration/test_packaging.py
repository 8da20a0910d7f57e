"""The distribution as ``pip install .`` (and the container image) builds it: one top-level
import name, the Lua scripts inside, and a working install without the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of the source tree: setuptools reuses a ``build/``
    folder, and one left by an earlier build would smuggle deleted modules into the wheel."""
    source = tmp_path_factory.mktemp("source") / "loops-webhooks"
    shutil.copytree(
        REPO_ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".loops-webhooks"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("loops_webhooks-*.whl")
    return built


def test_the_wheel_has_exactly_one_top_level_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }

    assert top_level == {"loops_webhooks"}
    assert "loops_webhooks/handlers/router.py" in names
    assert "loops_webhooks/workers/dispatch.py" in names
    assert "loops_webhooks/ingest/app.py" in names
    assert "loops_webhooks/py.typed" in names


def test_the_wheel_ships_every_lua_script(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    scripts = sorted(path.name for path in (REPO_ROOT / "workers" / "lua").glob("*.lua"))

    assert scripts
    assert [s for s in scripts if f"loops_webhooks/workers/lua/{s}" not in names] == []


def test_the_wheel_ships_the_dashboards_templates_and_assets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dashboard = REPO_ROOT / "loops_webhooks" / "dashboard"

    assets = [
        path.relative_to(dashboard).as_posix()
        for folder in ("templates", "static")
        for path in (dashboard / folder).iterdir()
    ]

    assert assets
    assert [a for a in assets if f"loops_webhooks/dashboard/{a}" not in names] == []


def test_an_install_from_the_wheel_runs_its_scripts_against_redis(
    wheel: Path, tmp_path: Path, redis_url: str
) -> None:
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    script = textwrap.dedent(
        f"""
        import asyncio, loops_webhooks
        from redis.asyncio import Redis
        from loops_webhooks.workers.intake import EventIntake, ReceivedEvent
        from loops_webhooks.workers.scripts import SCRIPTS, script_source

        assert loops_webhooks.__file__.startswith({str(installed)!r}), loops_webhooks.__file__
        assert all(script_source(name) for name in SCRIPTS)

        async def main():
            redis = Redis.from_url({redis_url!r})
            intake = EventIntake(redis, queue_name="packaging:queue")
            event = ReceivedEvent("evt_wheel", "checkout.session.completed", b"{{}}", {{}}, 1)
            print(await intake.submit(event), await intake.submit(event))
            await redis.aclose()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}

    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["True", "False"]
