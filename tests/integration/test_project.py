"""A shop's own project: its handler package found from the project directory, and ``dev``
giving a command to paste that works as printed, with a secret that survives restarts."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

from loops_webhooks.workers.event_store import EventStore
from tests.support.loops_sender import WEBHOOK_SECRET
from tests.support.processes import Service, StartLoopsWebhooks
from tests.support.waiting import eventually

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")

WEBHOOKS = """\
import os

from loops_webhooks import HandlerContext, Router
from loops_webhooks.events import CheckoutSessionEvent

router = Router()


@router.on("checkout.session.completed")
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    with open(os.environ["EFFECTS_FILE"], "a") as effects:
        effects.write(f"{event.id} {event.data.metadata['orderId']}\\n")


@router.on("checkout.session.complete", name="typo")
async def typo(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    pass
"""


def write_shop(project: Path) -> None:
    """``myshop/webhooks.py`` in ``project``, as the README lays a shop's project out."""
    (project / "myshop").mkdir(parents=True)
    (project / "myshop" / "__init__.py").write_text("")
    (project / "myshop" / "webhooks.py").write_text(WEBHOOKS)


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOPS_") and k != "REDIS_URL"}
    return subprocess.run([LOOPS_WEBHOOKS, *args], env={**base, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


async def test_a_worker_started_in_the_project_directory_runs_the_shops_own_package(
    tmp_path: Path,
    redis: Redis,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    write_shop(tmp_path)
    effects = tmp_path / "effects.txt"
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "myshop.webhooks:router",
        "LOOPS_METRICS_PORT": "0",
        "LOOPS_LOG_FORMAT": "json",
        "LOOPS_API_KEY": "sk_live_the_shops_own",
        "EFFECTS_FILE": str(effects),
    }
    worker = start_loops_webhooks("worker", env={**env, "PYTHONPATH": ""})
    port = free_port()
    start_loops_webhooks("serve", "--port", str(port), env=env, port=port)

    url = f"http://127.0.0.1:{port}/webhooks/loops"
    sent = cli("send", "checkout.session.completed", "--count", "3", "--json", "--url", url,
               env=env, cwd=tmp_path)  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    ids = sorted(delivery["id"] for delivery in orjson.loads(sent.stdout)["sent"])
    store = EventStore(redis, dedupe_ttl_seconds=3600)

    async def all_done() -> bool:
        stored = [await store.get(event_id) for event_id in ids]
        return all(event is not None and event.status == "done" for event in stored)

    await eventually(all_done, within=20, what="3 events done", details=worker.output)
    handled = sorted(line.split()[0] for line in effects.read_text().splitlines())
    assert handled == ids
    assert "matches no known Loops event type; did you mean 'checkout.session.completed'?" in (
        worker.output()
    )


def test_handlers_lists_the_package_from_another_directory_with_app_dir(tmp_path: Path) -> None:
    write_shop(tmp_path / "shop")

    listed = cli("handlers", "--handlers", "myshop.webhooks:router", "--app-dir", "shop",
                 "--json", env={}, cwd=tmp_path)  # fmt: skip

    assert listed.returncode == 0, listed.stderr
    names = [handler["name"] for handler in orjson.loads(listed.stdout)["handlers"]]
    assert names == ["myshop.webhooks:fulfil", "typo"]


async def banner_printed(dev: Service) -> None:
    """Once the receiver and the dashboard listen, ``dev`` prints what to try."""

    async def printed() -> bool:
        return "try: " in dev.output()

    await eventually(printed, within=30, what="dev's banner", details=dev.output)


def test_dev_prints_a_send_command_that_works_as_printed_and_keeps_its_secret(
    tmp_path: Path,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    env = {"REDIS_URL": redis_url, "LOOPS_METRICS_PORT": "0", "LOOPS_DATA_DIR": "data"}
    port = free_port()
    ports = ("--port", str(port), "--dashboard-port", str(free_port()))
    dev = start_loops_webhooks("dev", *ports, env=env, port=port)
    asyncio.run(banner_printed(dev))
    [command] = [line.split("try: ", 1)[1] for line in dev.output().splitlines() if "try: " in line]

    pasted = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("LOOPS_")},
                            timeout=60)  # fmt: skip

    assert pasted.returncode == 0, (command, pasted.stdout, pasted.stderr)
    assert " 200 " in pasted.stdout
    secret = shlex.split(command)[-1]
    secret_file = tmp_path / "data" / "dev-webhook-secret"
    assert secret_file.read_text().strip() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert dev.stop() == 0

    port = free_port()
    ports = ("--port", str(port), "--dashboard-port", str(free_port()))
    again = start_loops_webhooks("dev", *ports, env=env, port=port)
    asyncio.run(banner_printed(again))
    assert f"--secret {secret}" in again.output()


BROKEN_HANDLER = """\
import os

from loops_webhooks import HandlerContext, Router
from loops_webhooks.events import CheckoutSessionEvent

router = Router()


@router.on("checkout.session.completed")
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    order = event.data.metadata["order"]  # KeyError: the metadata says orderId
    with open(os.environ["EFFECTS_FILE"], "a") as effects:
        effects.write(f"{event.id} {order}\\n")
"""


def save(path: Path, text: str) -> None:
    """Write ``path`` as editors do: a temporary file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.saving")
    temporary.write_text(text)
    os.replace(temporary, path)


async def test_dev_reloads_the_worker_when_a_handler_is_edited_so_a_replay_runs_the_fix(
    tmp_path: Path,
    redis: Redis,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    write_shop(tmp_path)
    module = tmp_path / "myshop" / "webhooks.py"
    save(module, BROKEN_HANDLER)
    effects = tmp_path / "effects.txt"
    env = {
        "REDIS_URL": redis_url,
        "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOOPS_HANDLERS": "myshop.webhooks:router",
        "LOOPS_MAX_ATTEMPTS": "1",
        "LOOPS_DATA_DIR": "data",
        "EFFECTS_FILE": str(effects),
    }
    port = free_port()
    dev = start_loops_webhooks("dev", "--port", str(port), "--dashboard-port", str(free_port()),
                               env=env, port=port)  # fmt: skip
    store = EventStore(redis, dedupe_ttl_seconds=3600)

    def reloads() -> int:
        return dev.output().count("restarting the worker")

    async def started(count: int) -> bool:
        return dev.output().count("worker started") == count

    await eventually(lambda: started(1), within=30, what="the worker started", details=dev.output)
    url = f"http://127.0.0.1:{port}/webhooks/loops"
    sent = cli("send", "checkout.session.completed", "--id", "evt_reload", "--url", url,
               env=env, cwd=tmp_path)  # fmt: skip
    assert sent.returncode == 0, sent.stderr

    async def dead() -> bool:
        event = await store.get("evt_reload")
        return event is not None and event.status == "dead"

    await eventually(dead, within=20, what="the KeyError dead-lettered", details=dev.output)

    save(module, BROKEN_HANDLER.replace("async def fulfil(", "async def fulfil(:"))

    async def worker_exited() -> bool:
        return "the worker exited" in dev.output()

    await eventually(worker_exited, within=20, what="a syntax error logged", details=dev.output)
    assert "SyntaxError" in dev.output()
    assert dev.process.poll() is None, dev.output()

    save(module, BROKEN_HANDLER.replace('metadata["order"]', 'metadata["orderId"]'))

    await eventually(lambda: started(2), within=30, what="the fixed worker", details=dev.output)
    assert reloads() == 2
    [line] = [line for line in dev.output().splitlines() if "restarting the worker" in line][-1:]
    assert "myshop/webhooks.py" in line
    # Said before it happens: the first restart stopped a running worker, after the line.
    assert dev.output().index("restarting the worker") < dev.output().index("worker stopped")
    replayed = cli("dlq", "replay", "--all", env=env, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr

    async def done() -> bool:
        event = await store.get("evt_reload")
        return event is not None and event.status == "done"

    await eventually(done, within=20, what="the replay ran the fixed code", details=dev.output)
    [effect] = effects.read_text().splitlines()
    assert effect.startswith("evt_reload ")
    await asyncio.sleep(1.5)
    assert reloads() == 2  # the log and the effects, written in the project, restart nothing
