"""``loops-webhooks handlers``: what is registered, found from the project directory, with no
Redis; a handler module that fails to import shows its traceback and exits 2."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from loops_webhooks.cli import main


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LOOPS_* or REDIS_URL leaks in; sys.path, sys.modules and logging are put back."""
    for name in list(os.environ):
        if name.upper().startswith("LOOPS_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    handlers = logging.getLogger().handlers[:]
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def shop_package(root: Path, webhooks_source: str) -> str:
    """A package ``<unique>/webhooks.py`` under ``root``; returns its handlers spec."""
    package = f"shop_{uuid.uuid4().hex[:8]}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "webhooks.py").write_text(webhooks_source)
    return f"{package}.webhooks:router"


WEBHOOKS = """\
from loops_webhooks import HandlerContext, Router
from loops_webhooks.events import CheckoutSessionEvent

router = Router()


@router.on("checkout.session.completed", max_attempts=3)
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    pass


@router.on("checkout.session.complete", name="typo", timeout=5)
def typo(event, ctx):
    pass
"""


def test_the_handlers_are_listed_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = shop_package(tmp_path, WEBHOOKS)
    monkeypatch.chdir(tmp_path)

    assert main(["handlers", "--handlers", spec]) == 0

    out, err = capsys.readouterr()
    package = spec.split(".")[0]
    assert out.splitlines() == [
        f"{package}.webhooks:fulfil  pattern 'checkout.session.completed'",
        "  max_attempts 3, timeout 30 s (default), async",
        "  matches: checkout.session.completed",
        "typo  pattern 'checkout.session.complete'",
        "  max_attempts 8 (default), timeout 5 s, def, in a thread",
        "  matches: no known Loops event type",
    ]
    assert err == (
        "warning: handler 'typo': pattern 'checkout.session.complete' matches no known Loops "
        "event type; did you mean 'checkout.session.completed'?\n"
    )


def test_the_handlers_are_listed_as_json_from_the_app_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = shop_package(tmp_path / "project", WEBHOOKS)

    assert main(["handlers", "--handlers", spec, "--app-dir", str(tmp_path / "project"),
                 "--json"]) == 0  # fmt: skip

    listed = orjson.loads(capsys.readouterr().out)
    assert [h["name"].split(":")[-1] for h in listed["handlers"]] == ["fulfil", "typo"]
    assert listed["handlers"][0] == {
        "name": listed["handlers"][0]["name"],
        "pattern": "checkout.session.completed",
        "max_attempts": 3,
        "timeout_seconds": None,
        "concurrency": None,
        "rate": None,
        "async": True,
        "model": "CheckoutSessionEvent",
        "matches": ["checkout.session.completed"],
        "paused": None,
        "waiting": None,
    }
    assert len(listed["warnings"]) == 1


def test_a_module_that_raises_on_import_shows_its_traceback_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = shop_package(tmp_path, "from loops_webhooks import Router\n\nrouter = Router()\n1 / 0\n")
    monkeypatch.chdir(tmp_path)

    assert main(["handlers", "--handlers", spec]) == 2

    err = capsys.readouterr().err
    webhooks = tmp_path / spec.split(".")[0] / "webhooks.py"
    assert f'File "{webhooks}", line 4, in <module>' in err
    assert "ZeroDivisionError: division by zero" in err
    assert err.splitlines()[-1].startswith(f"loops-webhooks: cannot load handlers {spec!r}")


def test_a_registration_error_at_import_points_at_the_decorator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "from loops_webhooks import Router\n\nrouter = Router()\n\n\n"
    source += "@router.on('*', max_attempt=3)\nasync def handle(event, ctx):\n    pass\n"
    spec = shop_package(tmp_path, source)
    monkeypatch.chdir(tmp_path)

    assert main(["worker", "--handlers", spec]) == 2

    err = capsys.readouterr().err
    assert 'webhooks.py", line 6, in <module>' in err
    assert "did you mean 'max_attempts'?" in err.splitlines()[-1]


def test_a_package_not_found_says_where_it_was_looked_for_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["handlers", "--handlers", "myshop_not_here.webhooks:router"]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert "No module named 'myshop_not_here'" in line
    assert f"looked in {tmp_path.resolve()} and the installed packages" in line
    assert "--app-dir" in line


def test_a_missing_dependency_of_the_handler_module_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = shop_package(tmp_path, "import stripe_sdk_not_installed\n")
    monkeypatch.chdir(tmp_path)

    assert main(["handlers", "--handlers", spec]) == 2

    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "No module named 'stripe_sdk_not_installed'" in err.splitlines()[-1]


def test_a_handlers_limits_are_listed_in_text_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = shop_package(
        tmp_path,
        """
from loops_webhooks.handlers import Router

router = Router()


@router.on("refund.created", name="erp", concurrency=2, rate="10/s")
async def erp(event, ctx):
    pass
""",
    )
    monkeypatch.chdir(tmp_path)

    assert main(["handlers", "--handlers", spec]) == 0
    assert "  limits: concurrency 2, rate 10/s" in capsys.readouterr().out.splitlines()
    assert main(["handlers", "--handlers", spec, "--json"]) == 0
    (erp,) = orjson.loads(capsys.readouterr().out)["handlers"]
    assert (erp["concurrency"], erp["rate"]) == (2, "10/s")
