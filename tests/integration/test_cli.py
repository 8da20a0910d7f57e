"""The command line, through the real ``loops-webhooks`` entry point, against a real Redis.

Handlers are real modules written into the test's directory; each records its effect as one
line in a file, so a test counts how often a handler ran for an event.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import orjson
import pytest
import redis as redis_sync

from loops_webhooks.embedded_redis import stop_embedded_redis
from loops_webhooks.workers import keys
from tests.support.loops_sender import WEBHOOK_SECRET
from tests.support.processes import StartLoopsWebhooks

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
DEADLINE_SECONDS = 30.0

HANDLERS_MODULE = """
import os
from pathlib import Path

from loops_webhooks.handlers import HandlerContext, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent

router = Router()
EFFECTS = Path(os.environ["EFFECTS_FILE"])
BROKEN = Path(os.environ["BROKEN_FLAG"])


def _record(handler: str, event_id: str) -> None:
    with EFFECTS.open("a") as effects:
        effects.write(f"{handler} {event_id}\\n")


@router.on("checkout.session.completed", name="fulfil")
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    _record("fulfil", event.id)


@router.on("checkout.session.completed", name="notify", max_attempts=1)
async def notify(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    if BROKEN.exists():
        raise RuntimeError("mail server said no")
    _record("notify", event.id)
"""


class Workspace:
    """A handlers module, its effects file and the 'broken' switch, and the CLI's environment."""

    def __init__(self, root: Path, redis_url: str) -> None:
        self.root = root
        self.effects = root / "effects.txt"
        self.effects.touch()
        self.broken = root / "broken"
        (root / "cli_handlers.py").write_text(HANDLERS_MODULE)
        self.env = {
            "REDIS_URL": redis_url,
            "LOOPS_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOOPS_HANDLERS": "cli_handlers:router",
            "LOOPS_METRICS_PORT": "0",
            "LOOPS_RETRY_BASE_SECONDS": "0.1",
            "LOOPS_LOG_FORMAT": "json",
            "EFFECTS_FILE": str(self.effects),
            "BROKEN_FLAG": str(self.broken),
            "PYTHONPATH": str(root),
            # A shop's own variable under our prefix: every command must start normally.
            "LOOPS_API_KEY": "sk_live_the_shops_own",
        }

    def effects_of(self, handler: str, event_id: str) -> int:
        return self.effects.read_text().splitlines().count(f"{handler} {event_id}")


def run_cli(
    *args: str, env: Mapping[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOPS_") and k != "REDIS_URL"}
    return subprocess.run(
        [LOOPS_WEBHOOKS, *args],
        env={**base, **env},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def event_status(redis_url: str, event_id: str) -> str | None:
    status = redis_sync.Redis.from_url(redis_url).hget(keys.event_key(event_id), "status")
    return status.decode() if isinstance(status, bytes) else None


def dead_letter_ids(redis_url: str) -> list[str]:
    client = redis_sync.Redis.from_url(redis_url)
    return sorted(raw.decode() for raw in client.zrange(keys.DEAD_LETTER_INDEX, 0, -1))


@pytest.fixture
def workspace(tmp_path: Path, redis_url: str) -> Workspace:
    return Workspace(tmp_path, redis_url)


@pytest.fixture
def dev(
    workspace: Workspace, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> Iterator[str]:
    """A running ``loops-webhooks dev``; yields its webhook URL."""
    port = free_port()
    start_loops_webhooks(
        "dev",
        "--port",
        str(port),
        "--dashboard-port",
        str(free_port()),
        env=workspace.env,
        port=port,
    )
    yield f"http://127.0.0.1:{port}/webhooks/loops"


def send(workspace: Workspace, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("send", "checkout.session.completed", "--url", url, *extra, env=workspace.env)


def test_send_to_a_running_dev_ends_with_the_handler_having_run(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    sent = send(workspace, dev, "--id", "evt_cli_send")

    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("evt_cli_send 200 ")
    wait_until(lambda: workspace.effects_of("fulfil", "evt_cli_send") == 1, "the handler")
    shown = run_cli("events", "show", "evt_cli_send", "--json", env=workspace.env)
    story = orjson.loads(shown.stdout)
    assert story["status"] == "done"
    assert story["handlers"]["fulfil"]["status"] == "done"


def test_send_count_reports_how_many_distinct_events_were_accepted(
    workspace: Workspace, dev: str
) -> None:
    sent = send(workspace, dev, "--count", "25")

    assert sent.returncode == 0, sent.stderr
    *lines, summary = sent.stdout.splitlines()
    assert summary == "accepted 25 of 25 events"
    ids = [line.split()[0] for line in lines]
    assert len(set(ids)) == 25 and all(line.split()[1] == "200" for line in lines)
    wait_until(lambda: all(workspace.effects_of("fulfil", i) == 1 for i in ids), "25 handled")


def test_send_json_lists_every_event_sent_and_events_list_shows_them_newest_first(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    sent = orjson.loads(send(workspace, dev, "--count", "3", "--json").stdout)
    ids = [delivery["id"] for delivery in sent["sent"]]
    assert sent["accepted"] == 3
    wait_until(lambda: all(event_status(redis_url, i) == "done" for i in ids), "3 done")

    listed = run_cli("events", "list", "--json", env=workspace.env)
    dead = run_cli("events", "list", "--status", "dead", env=workspace.env)

    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert [row["received_at"] for row in rows] == sorted(
        (row["received_at"] for row in rows), reverse=True
    )
    assert {row["status"] for row in rows} == {"done"}
    assert dead.stdout.strip() == "no events"


@pytest.fixture
def dev_without_a_secret(
    workspace: Workspace, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> tuple[str, dict[str, str], str]:
    """A running ``dev`` given no signing secret: its webhook URL, the environment (the same
    data directory for the commands a test runs next) and what it printed."""
    env = {k: v for k, v in workspace.env.items() if k != "LOOPS_WEBHOOK_SECRET"}
    env["LOOPS_DATA_DIR"] = str(workspace.root / "data")
    port = free_port()
    dev = start_loops_webhooks(
        "dev", "--port", str(port), "--dashboard-port", str(free_port()), env=env, port=port
    )
    wait_until(lambda: "the worker restarts when" in dev.output(), "the banner, once all listen")
    return f"http://127.0.0.1:{port}/webhooks/loops", env, dev.output()


def test_dev_without_a_secret_prints_one_that_signs_accepted_events(
    workspace: Workspace, dev_without_a_secret: tuple[str, dict[str, str], str]
) -> None:
    url, env, output = dev_without_a_secret
    printed = [word for word in output.split() if word.startswith("whsec_dev_")]
    assert printed, output

    sent = run_cli("send", "checkout.session.completed", "--url", url, "--secret", printed[0],
                   "--id", "evt_generated_secret", env=env)  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: workspace.effects_of("fulfil", "evt_generated_secret") == 1, "handler")


def test_send_without_a_secret_signs_with_the_development_secret_dev_keeps(
    workspace: Workspace, dev_without_a_secret: tuple[str, dict[str, str], str]
) -> None:
    url, env, _ = dev_without_a_secret

    sent = run_cli("send", "checkout.session.completed", "--url", url, "--id", "evt_kept_secret",
                   env=env)  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("evt_kept_secret 200 ")
    wait_until(lambda: workspace.effects_of("fulfil", "evt_kept_secret") == 1, "handler")


def test_send_with_no_secret_anywhere_exits_2_naming_both_places(workspace: Workspace) -> None:
    env = {k: v for k, v in workspace.env.items() if k != "LOOPS_WEBHOOK_SECRET"}
    env["LOOPS_DATA_DIR"] = str(workspace.root / "empty")

    sent = run_cli("send", "checkout.session.completed", env=env)

    assert sent.returncode == 2, sent.stdout
    assert "LOOPS_WEBHOOK_SECRET is not set" in sent.stderr
    assert f"no development secret in {workspace.root / 'empty' / 'dev-webhook-secret'}" in (
        sent.stderr
    )


def test_dev_on_the_embedded_redis_processes_after_a_restart_what_was_received_before(
    workspace: Workspace,
    tmp_path: Path,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    env = {k: v for k, v in workspace.env.items() if k != "REDIS_URL"}
    env["LOOPS_DATA_DIR"] = str(tmp_path / "data")
    try:
        port = free_port()
        receiver = start_loops_webhooks("serve", "--port", str(port), env=env, port=port)
        url = f"http://127.0.0.1:{port}/webhooks/loops"
        sent = run_cli("send", "checkout.session.completed", "--url", url,
                       "--id", "evt_before_restart", env=env)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert receiver.stop() == 0
        assert workspace.effects_of("fulfil", "evt_before_restart") == 0

        port = free_port()
        start_loops_webhooks(
            "dev", "--port", str(port), "--dashboard-port", str(free_port()), env=env, port=port
        )

        wait_until(lambda: workspace.effects_of("fulfil", "evt_before_restart") == 1, "handler")
    finally:
        stop_embedded_redis(tmp_path / "data")


def test_stop_redis_stops_the_embedded_redis_and_keeps_its_data(
    workspace: Workspace, tmp_path: Path
) -> None:
    env = {k: v for k, v in workspace.env.items() if k != "REDIS_URL"}
    env["LOOPS_DATA_DIR"] = str(tmp_path / "data")
    try:
        assert run_cli("stats", env=env).returncode == 0
        port = int((tmp_path / "data" / "redis.port").read_text())

        stopped = run_cli("stop-redis", env=env)

        assert stopped.returncode == 0, stopped.stderr
        assert "stopped the embedded Redis" in stopped.stdout
        with pytest.raises(redis_sync.ConnectionError):
            redis_sync.Redis(port=port, socket_connect_timeout=1).ping()
        assert (tmp_path / "data" / "appendonly.aof").exists() or any(
            (tmp_path / "data").glob("appendonlydir/*")
        )
        assert "no embedded Redis runs" in run_cli("stop-redis", env=env).stdout
    finally:
        stop_embedded_redis(tmp_path / "data")


def test_dev_stops_cleanly_on_sigint(
    workspace: Workspace, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    port = free_port()
    dev = start_loops_webhooks(
        "dev",
        "--port",
        str(port),
        "--dashboard-port",
        str(free_port()),
        env=workspace.env,
        port=port,
    )

    dev.process.send_signal(signal.SIGINT)

    assert dev.process.wait(timeout=30) == 0


@pytest.fixture
def dead_lettered(workspace: Workspace, dev: str, redis_url: str) -> str:
    """An event whose 'notify' handler is dead-lettered while 'fulfil' succeeded once."""
    workspace.broken.touch()
    sent = send(workspace, dev, "--id", "evt_cli_dead")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: dead_letter_ids(redis_url) == ["evt_cli_dead:notify"], "the dead letter")
    assert workspace.effects_of("fulfil", "evt_cli_dead") == 1
    return "evt_cli_dead:notify"


def invalid_payload_letters(
    workspace: Workspace, dev: str, redis_url: str, event_id: str
) -> list[str]:
    """Send ``event_id`` with a payload the handlers' model rejects, and wait for the
    ``invalid_payload`` letters of both handlers; their ids."""
    sent = send(workspace, dev, "--id", event_id, "--data", '{"status": 5}')
    assert sent.returncode == 0, sent.stderr
    letters = [f"{event_id}:fulfil", f"{event_id}:notify"]
    wait_until(lambda: dead_letter_ids(redis_url) == letters, "the invalid_payload letters")
    return letters


def test_dlq_list_and_show_describe_the_dead_letter(
    workspace: Workspace, dead_lettered: str
) -> None:
    listed = run_cli("dlq", "list", "--json", env=workspace.env)
    shown = run_cli("dlq", "show", dead_lettered, env=workspace.env)

    [entry] = orjson.loads(listed.stdout)
    assert entry["handler"] == "notify"
    assert entry["reason"] == "max_attempts"
    by_reason = run_cli("dlq", "list", "--reason", "max_attempts", "--json", env=workspace.env)
    other_reason = run_cli("dlq", "list", "--reason", "rejected", "--json", env=workspace.env)
    assert [e["id"] for e in orjson.loads(by_reason.stdout)] == [dead_lettered]
    assert orjson.loads(other_reason.stdout) == []
    assert "RuntimeError: mail server said no" in shown.stdout
    assert "Traceback" in shown.stdout
    assert '"id":"evt_cli_dead"' in shown.stdout


def test_dlq_list_shows_each_letters_error(workspace: Workspace, dead_lettered: str) -> None:
    listed = run_cli("dlq", "list", env={**workspace.env, "COLUMNS": "200"})

    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.startswith("evt_cli_dead  notify  checkout.session.completed  max_attempts  ")
    assert line.endswith("  RuntimeError: mail server said no")


def test_dlq_list_on_a_terminal_fits_each_letter_on_one_line_of_its_width(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    invalid_payload_letters(workspace, dev, redis_url, "evt_cli_long")

    lines = on_a_terminal("dlq", "list", env={**workspace.env, "COLUMNS": "150"}).splitlines()

    assert len(lines) == 2
    for line, handler in zip(lines, ("notify", "fulfil"), strict=True):
        assert len(line) == 150
        assert line.startswith(f"evt_cli_long  {handler}  checkout.session.completed  ")
        assert "  ValidationError: 1 validation error" in line and line.endswith("…")


def test_dlq_list_piped_keeps_each_letters_whole_error(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    invalid_payload_letters(workspace, dev, redis_url, "evt_cli_piped")

    listed = run_cli("dlq", "list", env={**workspace.env, "COLUMNS": "80"}).stdout.splitlines()

    assert len(listed) == 2
    for line in listed:
        assert line.endswith(
            "  ValidationError: 1 validation error(s) for CheckoutSessionEvent: "
            "data.status: Input should be a valid string [type=string_type]"
        )


def on_a_terminal(*args: str, env: Mapping[str, str]) -> str:
    """What ``loops-webhooks *args`` prints with a terminal (a pseudo-terminal) as stdout."""
    leader, follower = pty.openpty()
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOOPS_")}
        subprocess.run([LOOPS_WEBHOOKS, *args], env={**base, **env}, stdout=follower,
                       stdin=subprocess.DEVNULL, timeout=60, check=True)  # fmt: skip
    finally:
        os.close(follower)
    output = b""
    with contextlib.suppress(OSError):  # EIO: everything written was read
        while chunk := os.read(leader, 65536):
            output += chunk
    os.close(leader)
    return output.decode()


def test_dlq_show_with_the_event_id_shows_that_events_letters(
    workspace: Workspace, dead_lettered: str
) -> None:
    shown = run_cli("dlq", "show", "evt_cli_dead", "--json", env=workspace.env)

    assert shown.returncode == 0, shown.stderr
    [letter] = orjson.loads(shown.stdout)
    assert letter["id"] == dead_lettered
    assert "mail server said no" in letter["traceback"]


def test_events_show_keeps_the_attempts_from_before_a_replay(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    workspace.broken.unlink()
    assert run_cli("dlq", "replay", dead_lettered, env=workspace.env).returncode == 0
    wait_until(lambda: event_status(redis_url, "evt_cli_dead") == "done", "the replayed event")

    shown = run_cli("events", "show", "evt_cli_dead", env=workspace.env)
    story = orjson.loads(run_cli("events", "show", "evt_cli_dead", "--json",
                                 env=workspace.env).stdout)  # fmt: skip

    assert "  notify: done, 1 attempt(s)" in shown.stdout
    assert "  notify (before a replay): dead, 1 attempt(s), last at " in shown.stdout
    assert "    last error: RuntimeError: mail server said no" in shown.stdout
    [before] = story["before_replays"]["notify"]
    assert (before["status"], before["attempts"]) == ("dead", 1)
    assert story["handlers"]["notify"]["status"] == "done"


def test_a_dead_letter_replayed_after_the_fix_ends_handled_without_rerunning_what_succeeded(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    workspace.broken.unlink()

    replayed = run_cli("dlq", "replay", dead_lettered, env=workspace.env)

    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1, skipped 0, already gone 0" in replayed.stdout
    wait_until(lambda: event_status(redis_url, "evt_cli_dead") == "done", "the replayed event")
    assert workspace.effects_of("notify", "evt_cli_dead") == 1
    assert workspace.effects_of("fulfil", "evt_cli_dead") == 1
    assert dead_letter_ids(redis_url) == []


def test_dlq_replay_with_the_event_id_replays_that_events_letters(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    workspace.broken.unlink()

    replayed = run_cli("dlq", "replay", "evt_cli_dead", env=workspace.env)

    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1, skipped 0, already gone 0" in replayed.stdout
    wait_until(lambda: event_status(redis_url, "evt_cli_dead") == "done", "the replayed event")
    assert workspace.effects_of("notify", "evt_cli_dead") == 1
    assert dead_letter_ids(redis_url) == []


def test_dlq_purge_with_the_event_id_deletes_that_events_letters(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    purged = run_cli("dlq", "purge", "evt_cli_dead", "--yes", env=workspace.env)

    assert purged.returncode == 0, purged.stderr
    assert "purged 1 dead letter(s)" in purged.stdout
    assert dead_letter_ids(redis_url) == []


@pytest.mark.parametrize("command", [("replay",), ("purge", "--yes")])
def test_dlq_replay_or_purge_of_an_id_naming_no_letter_and_no_event_exits_1(
    command: tuple[str, ...], workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    result = run_cli("dlq", *command, dead_lettered, "evt_never_sent", env=workspace.env)

    assert result.returncode == 1, result.stdout
    assert "no dead letter 'evt_never_sent', and no event 'evt_never_sent'" in result.stderr
    assert dead_letter_ids(redis_url) == [dead_lettered]


def test_dlq_replay_and_purge_help_say_an_id_may_be_an_event_id(workspace: Workspace) -> None:
    for command in ("replay", "purge"):
        shown = run_cli("dlq", command, "--help", env=workspace.env)
        assert "event ids (every dead letter of that event)" in " ".join(shown.stdout.split())


def test_replaying_an_invalid_payload_letter_without_force_says_it_would_fail_the_same_way(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    letters = invalid_payload_letters(workspace, dev, redis_url, "evt_cli_invalid")

    replayed = run_cli("dlq", "replay", "evt_cli_invalid", env=workspace.env)

    assert replayed.returncode == 0, replayed.stderr
    for letter_id in letters:
        assert (
            f"skipped {letter_id}: an invalid_payload letter (its stored event did not fit the "
            "handler's model), which would fail the same way again; fix the model, then replay "
            "it with --force"
        ) in replayed.stdout
    assert "holds no event" not in replayed.stdout
    assert "replayed 0, skipped 2, already gone 0" in replayed.stdout
    assert dead_letter_ids(redis_url) == letters


def test_a_dry_run_replay_of_invalid_payload_letters_says_what_the_real_run_would_do(
    workspace: Workspace, dev: str, redis_url: str
) -> None:
    letters = invalid_payload_letters(workspace, dev, redis_url, "evt_cli_dry_invalid")

    dry = run_cli("dlq", "replay", "evt_cli_dry_invalid", "--dry-run", env=workspace.env)
    forced = run_cli(
        "dlq", "replay", "evt_cli_dry_invalid", "--dry-run", "--force", env=workspace.env
    )

    assert dry.returncode == 0, dry.stderr
    for letter_id in letters:
        assert f"would skip {letter_id}: an invalid_payload letter" in dry.stdout
        assert "replay it with --force" in dry.stdout
        assert f"would replay {letter_id}" in forced.stdout
    assert "would replay 0, would skip 2 (dry run: nothing changed)" in dry.stdout
    assert "would replay 2, would skip 0 (dry run: nothing changed)" in forced.stdout
    assert dead_letter_ids(redis_url) == letters


def test_a_forced_replay_reruns_the_handlers_that_had_succeeded(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    workspace.broken.unlink()

    replayed = run_cli("dlq", "replay", "--all", "--force", env=workspace.env)

    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: event_status(redis_url, "evt_cli_dead") == "done", "the replayed event")
    assert workspace.effects_of("fulfil", "evt_cli_dead") == 2


def test_a_dry_run_replay_changes_nothing(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    before = client.hgetall(keys.event_key("evt_cli_dead"))

    dry = run_cli("dlq", "replay", "--all", "--dry-run", env=workspace.env)

    assert dry.returncode == 0, dry.stderr
    assert f"would replay {dead_lettered}" in dry.stdout
    assert dead_letter_ids(redis_url) == [dead_lettered]
    assert client.hgetall(keys.event_key("evt_cli_dead")) == before


def test_purge_without_yes_and_no_input_aborts(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    purged = run_cli("dlq", "purge", "--all", env=workspace.env)

    assert purged.returncode == 1
    assert "aborted" in purged.stderr
    assert dead_letter_ids(redis_url) == [dead_lettered]


def test_purge_with_yes_deletes_the_dead_letter(
    workspace: Workspace, dead_lettered: str, redis_url: str
) -> None:
    purged = run_cli("dlq", "purge", dead_lettered, "--yes", env=workspace.env)

    assert purged.returncode == 0, purged.stderr
    assert dead_letter_ids(redis_url) == []


def test_stats_count_the_dead_letter_by_reason_and_the_last_hour(
    workspace: Workspace, dead_lettered: str
) -> None:
    shown = run_cli("stats", "--json", env=workspace.env)

    stats = orjson.loads(shown.stdout)
    assert stats["dead_letters"] == 1
    assert stats["dead_letters_by_reason"] == {"max_attempts": 1}
    assert stats["last_hour"]["done"] >= 1
    assert stats["last_hour"]["dead_letter"] == 1
    assert stats["pending_events"] == 0
    text = run_cli("stats", env=workspace.env).stdout
    hour = stats["last_hour"]
    assert (
        f"last hour: handler attempts done {hour['done']}, retried {hour.get('retry', 0)}, "
        "dead-lettered 1; events no handler matched 0"
    ) in text


def test_an_interrupted_bulk_replay_loses_nothing(
    workspace: Workspace,
    redis_url: str,
    start_loops_webhooks: StartLoopsWebhooks,
    free_port: Callable[[], int],
) -> None:
    total = 1500
    workspace.broken.touch()
    worker = start_loops_webhooks("worker", env={**workspace.env, "LOOPS_WORKER_CONCURRENCY": "50"})
    port = free_port()
    start_loops_webhooks("serve", "--port", str(port), env=workspace.env, port=port)
    url = f"http://127.0.0.1:{port}/webhooks/loops"
    sent = run_cli("send", "checkout.session.completed", "--url", url, "--count", str(total),
                   env=workspace.env)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(dead_letter_ids(redis_url)) == total, f"{total} dead letters")
    assert worker.stop() == 0
    letters = dead_letter_ids(redis_url)

    replay = subprocess.Popen(
        [LOOPS_WEBHOOKS, "dlq", "replay", "--all"],
        env={**os.environ, **workspace.env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert replay.stderr is not None
    for line in replay.stderr:
        if line.startswith("..."):
            replay.send_signal(signal.SIGKILL)
            break
    replay.wait(timeout=30)

    remaining = set(dead_letter_ids(redis_url))
    requeued = [letter for letter in letters if letter not in remaining]
    assert 0 < len(requeued) < total, "the replay was not interrupted part-way"
    for letter in requeued:
        event_id = letter.removesuffix(":notify")
        assert event_status(redis_url, event_id) == "pending", letter
    queue = redis_sync.Redis.from_url(redis_url)
    queued = {raw.decode() for raw in queue.zrange("loops:queue", 0, -1)}
    assert {keys.job_id_for_event(letter.removesuffix(":notify")) for letter in requeued} <= queued

    rerun = run_cli("dlq", "replay", "--all", env=workspace.env)
    assert f"replayed {total - len(requeued)}, skipped 0, already gone 0" in rerun.stdout
    workspace.broken.unlink()
    start_loops_webhooks("worker", env={**workspace.env, "LOOPS_WORKER_CONCURRENCY": "50"})
    wait_until(lambda: workspace.effects.read_text().count("notify ") == total, "every replay")
    assert dead_letter_ids(redis_url) == []


@pytest.mark.parametrize(
    "args",
    [
        ("bogus",),
        ("dlq", "replay"),
        ("dlq", "purge", "--yes"),
        ("send", "checkout.session.completed", "--count", "0"),
        ("send", "checkout.session.completed", "--count", "2", "--id", "evt_1"),
        ("send", "checkout.session.completed", "--data", "[1, 2]"),
        ("dlq", "list", "--since", "last tuesday"),
        ("events", "show"),
    ],
    ids=lambda args: " ".join(args),
)
def test_bad_usage_exits_2(args: tuple[str, ...], workspace: Workspace) -> None:
    result = run_cli(*args, env=workspace.env)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()


@pytest.mark.parametrize(
    "url", ["redis://:hunter2@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=hunter2"]
)
def test_redis_down_exits_1_with_a_clear_message(
    workspace: Workspace, free_port: Callable[[], int], url: str
) -> None:
    env = {**workspace.env, "REDIS_URL": url.format(port=free_port())}

    result = run_cli("stats", env=env)

    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_handler_module_that_exits_at_import_makes_the_worker_exit_2_saying_so(
    workspace: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(7)\n")
    env = {**workspace.env, "PYTHONPATH": str(tmp_path)}

    result = run_cli("worker", "--handlers", "exits_at_import:router", env=env)

    assert result.returncode == 2, (result.stdout, result.stderr)
    last_line = result.stderr.strip().splitlines()[-1]
    assert "importing 'exits_at_import' failed: SystemExit: 7" in last_line
    assert f'File "{tmp_path / "exits_at_import.py"}", line 2' in result.stderr


@pytest.mark.parametrize(
    ("args", "unset", "extra", "error"),
    [
        (("dashboard",), (), {"LOOPS_DASHBOARD_TOKEN": "short"}, "LOOPS_DASHBOARD_TOKEN"),
        (("serve",), ("LOOPS_WEBHOOK_SECRET",), {}, "LOOPS_WEBHOOK_SECRET"),
        (("worker",), (), {"LOOPS_HANDLERS": "nope.mod:router"}, "nope.mod"),
    ],
    ids=["dashboard with a short token", "serve without a secret", "worker without handlers"],
)
def test_a_long_running_command_that_cannot_start_says_so_in_one_line_and_nothing_else(
    workspace: Workspace,
    args: tuple[str, ...],
    unset: tuple[str, ...],
    extra: dict[str, str],
    error: str,
) -> None:
    env = {k: v for k, v in workspace.env.items() if k not in unset} | extra

    result = run_cli(*args, env=env)

    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("loops-webhooks: ") and error in line, line


@pytest.mark.parametrize("command", ["serve", "dashboard"])
def test_serve_or_dashboard_on_a_busy_port_fails_in_one_line_naming_the_option(
    workspace: Workspace, free_port: Callable[[], int], command: str
) -> None:
    metrics_port = free_port()
    env = {**workspace.env, "LOOPS_METRICS_PORT": str(metrics_port),
           "LOOPS_DASHBOARD_TOKEN": "a-dashboard-token-of-some-length"}  # fmt: skip
    with busy_port() as port, busy_port(metrics_port):
        result = run_cli(command, "--port", str(port), env=env)

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"loops-webhooks: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another port with --port)"
    ]


@pytest.mark.parametrize("option", ["--port", "--dashboard-port"])
def test_dev_with_a_busy_port_fails_in_one_line_naming_the_option_and_prints_no_banner(
    workspace: Workspace, free_port: Callable[[], int], option: str
) -> None:
    env = {**workspace.env, "LOOPS_DATA_DIR": str(workspace.root / "data")}
    with busy_port() as port:
        ports = {"--port": str(free_port()), "--dashboard-port": str(free_port())}
        ports[option] = str(port)
        result = run_cli("dev", *(word for pair in ports.items() for word in pair), env=env)

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"loops-webhooks: cannot listen on 127.0.0.1:{port}: Address already in use "
        f"(choose another port with {option})"
    ]


def test_dev_prints_its_banner_once_the_receiver_and_the_dashboard_listen(
    workspace: Workspace, start_loops_webhooks: StartLoopsWebhooks, free_port: Callable[[], int]
) -> None:
    env = {**workspace.env, "LOOPS_DATA_DIR": str(workspace.root / "data")}
    port, dashboard_port = free_port(), free_port()
    dev = start_loops_webhooks("dev", "--port", str(port), "--dashboard-port",
                               str(dashboard_port), env=env, port=port)  # fmt: skip
    wait_until(lambda: "the worker restarts when" in dev.output(), "the banner")

    output = dev.output()
    banner = output.index("loops-webhooks dev: receiver at")
    assert output.index("receiver listening") < banner
    assert output.index("dashboard listening") < banner


@contextlib.contextmanager
def busy_port(port: int = 0) -> Iterator[int]:
    """A loopback port another process's socket listens on (``port``, else a free one)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        yield taken.getsockname()[1]


def test_an_unknown_event_exits_1(workspace: Workspace) -> None:
    result = run_cli("events", "show", "evt_never_sent", env=workspace.env)

    assert result.returncode == 1
    assert "evt_never_sent" in result.stderr
    assert "not found" in result.stderr


def test_help_is_available_for_every_command(workspace: Workspace) -> None:
    for command in (["serve"], ["worker"], ["dev"], ["handlers"], ["send"], ["events", "show"],
                    ["events", "list"], ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"],
                    ["dlq", "purge"], ["stats"], ["stop-redis"]):  # fmt: skip
        result = run_cli(*command, "--help", env=workspace.env)
        assert result.returncode == 0, command
        assert "usage: loops-webhooks" in result.stdout


def test_help_never_shows_the_configured_secret(workspace: Workspace) -> None:
    for command in ([], ["serve"], ["send"], ["dev"]):
        result = run_cli(*command, "--help", env=workspace.env)
        assert WEBHOOK_SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [("stats",), ("worker",), ("serve",), ("dlq", "list")])
def test_a_malformed_sentinel_url_exits_2_naming_redis_url(
    command: tuple[str, ...], workspace: Workspace
) -> None:
    env = {**workspace.env, "REDIS_URL": "redis+sentinel://:hunter2@127.0.0.1:26379"}

    result = run_cli(*command, env=env)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "REDIS_URL: not a valid Sentinel URL (no master name" in result.stderr
    assert "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_sentinels_exit_1_with_a_clear_message(
    workspace: Workspace, free_port: Callable[[], int]
) -> None:
    sentinels = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    env = {**workspace.env, "REDIS_URL": f"redis+sentinel://:hunter2@{sentinels}/loops"}

    result = run_cli("stats", env=env)

    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
