"""Child processes for tests and benchmarks: ``loops-webhooks`` commands (receiver, workers,
dashboard, ``dev``) with their output in log files, a supervisor that restarts workers as
systemd or Kubernetes would, and benchmark servers pinned to one core.

Every process gets a clean environment: none of the caller's ``LOOPS_*``, ``FAULTS_*`` or
``REDIS_URL`` reaches it, only what the test passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.ports import wait_for_port
from tests.support.waiting import eventually

LOOPS_WEBHOOKS = str(Path(sys.executable).parent / "loops-webhooks")
"""The installed console script, beside the interpreter running the tests."""

STOP_SECONDS = 10.0
MAX_RESTARTS = 200
MIN_SECONDS_BETWEEN_RESTARTS = 0.2
SUPERVISOR_TICK_SECONDS = 0.05


def clean_environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any setting of ours, plus ``env``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOOPS_", "FAULTS_")) and name != "REDIS_URL"
    }
    return {**inherited, **env}


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> int:
    """SIGTERM, as a process manager would send, then SIGKILL if it lingers; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class Service:
    """One ``loops-webhooks`` command as a child process in ``workdir``; each start writes
    its output (stdout and stderr) to a log file of its own under ``workdir/logs``.

    ``port``, when given, is where it listens: ``wait_listening`` waits for it.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        workdir: Path,
        *,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.workdir = workdir
        self.port = port
        self.logs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.last_start = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log_path = self.workdir / "logs" / f"{self.name}-{len(self.logs)}.log"
        log_path.parent.mkdir(exist_ok=True)
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [LOOPS_WEBHOOKS, *self.args],
                env={**self.env, "PYTHONFAULTHANDLER": "1"},  # stacks on SIGABRT (``wait``)
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.logs.append(log_path)
        self.last_start = time.monotonic()

    def wait_listening(self) -> None:
        """Return once it listens on ``port``; fail, with its output, if it exits first."""
        assert self.process is not None and self.port is not None
        wait_for_port(self.port, self.process, self.logs[-1])

    def exit_code(self) -> int | None:
        """None while it runs; its exit code (negative: killed by that signal) once it ended."""
        assert self.process is not None
        return self.process.poll()

    def wait(self, timeout: float = STOP_SECONDS) -> int:
        """Wait for a command that ends by itself (or was signalled to); its exit code. One
        still running after ``timeout`` is aborted, and the test fails with its log, in which
        Python's fault handler wrote every thread's stack: where it hung."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(STOP_SECONDS)
            raise AssertionError(
                f"{self.name} still running {timeout:g} s later; its stacks and log:\n"
                + self.output_tail(80)
            ) from None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_SECONDS)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; its exit code (None if never started)."""
        return None if self.process is None else stop(self.process)

    def output(self) -> str:
        """What the current start has written so far."""
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def output_tail(self, lines: int = 25) -> str:
        if not self.logs:
            return ""
        text = self.output().splitlines()[-lines:]
        return f"--- {self.logs[-1].name} ---\n" + "\n".join(text)


class Supervisor:
    """Keeps every worker running: restarts one as soon as it exits, and records why it did.

    A worker exiting with 2 (bad configuration, handlers that do not import) is not restarted:
    the supervisor fails with its output instead of looping. Drive it with ``run()`` (a task
    of its own) or with ``until()`` (it looks after the workers while it waits).
    """

    def __init__(self, workers: list[Service]) -> None:
        self.workers = workers
        self.kills = 0
        self.exits: list[int] = []
        """Every exit code seen, in order (negative: killed by that signal)."""

    def tick(self) -> None:
        """Restart every worker that exited (at most once per ``MIN_SECONDS_BETWEEN_RESTARTS``)."""
        for worker in self.workers:
            code = worker.exit_code()
            if code is None:
                continue
            if code == 2:
                raise AssertionError(f"worker cannot start:\n{worker.output_tail()}")
            if time.monotonic() - worker.last_start < MIN_SECONDS_BETWEEN_RESTARTS:
                continue
            if len(self.exits) >= MAX_RESTARTS:
                raise AssertionError(f"more than {MAX_RESTARTS} worker restarts")
            self.exits.append(code)
            worker.start()

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(SUPERVISOR_TICK_SECONDS)

    async def until(
        self, condition: Callable[[], Awaitable[bool]], *, within: float, what: str
    ) -> None:
        """Wait for ``condition`` while restarting each worker that exits."""

        async def supervised() -> bool:
            self.tick()
            return await condition()

        await eventually(supervised, within=within, what=what, details=self.describe)

    def kill(self, slot: int) -> None:
        """SIGKILL one worker (the supervisor starts it again on its next tick)."""
        worker = self.workers[slot]
        if worker.exit_code() is None:
            worker.kill()
            self.kills += 1

    @property
    def own_exits(self) -> int:
        """Exits the workers made themselves (Redis gone, a handler's ``os._exit``)."""
        return sum(1 for code in self.exits if code != -signal.SIGKILL)

    def describe(self) -> str:
        """The last lines of every worker's current log, for failure messages."""
        return "\n".join(worker.output_tail() for worker in self.workers)


StartLoopsWebhooks = Callable[..., Service]
"""The integration suite's ``start_loops_webhooks`` fixture: ``start(*args, env=..., port=...)``."""


@contextlib.contextmanager
def pinned_process(
    command: Sequence[str], core: int, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` on one CPU core only (every thread it starts inherits the mask), with
    a clean environment plus ``env``; stopped when the block ends. For the benchmarks."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=clean_environment(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )
    try:
        yield process
    finally:
        stop(process, timeout=15)
