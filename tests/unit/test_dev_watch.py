"""What ``dev`` watches to restart its worker: the project, and installed handler packages."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loops_webhooks.dev import watched_directories
from loops_webhooks.handlers import Router

HANDLERS = """\
from loops_webhooks import Router

router = Router()


@router.on("checkout.session.completed")
async def fulfil(event, ctx):
    pass
"""


@pytest.fixture
def importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path and sys.modules are put back after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def router_of(root: Path, *, in_package: bool) -> tuple[Router, Path]:
    """A handler module under ``root`` (in a package or top-level), imported; its router and
    its file."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    if in_package:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
        module_file = root / name / "webhooks.py"
        module_name = f"{name}.webhooks"
    else:
        module_file = root / f"{name}.py"
        module_name = name
    module_file.write_text(HANDLERS)
    sys.path.insert(0, str(root))
    router: Router = importlib.import_module(module_name).router
    return router, module_file


@pytest.mark.usefixtures("importable")
def test_a_handler_package_in_the_project_adds_nothing_to_the_project_directory(
    tmp_path: Path,
) -> None:
    router, _ = router_of(tmp_path / "project", in_package=True)

    assert watched_directories(tmp_path / "project", router) == [tmp_path / "project"]


@pytest.mark.usefixtures("importable")
def test_a_handler_package_installed_elsewhere_is_watched_too(tmp_path: Path) -> None:
    router, module_file = router_of(tmp_path / "site-packages", in_package=True)

    watched = watched_directories(tmp_path / "project", router)

    assert watched == [tmp_path / "project", module_file.parent]


@pytest.mark.usefixtures("importable")
def test_a_top_level_module_installed_elsewhere_does_not_watch_all_installed_packages(
    tmp_path: Path,
) -> None:
    router, _ = router_of(tmp_path / "site-packages", in_package=False)

    assert watched_directories(tmp_path / "project", router) == [tmp_path / "project"]
