"""The package's shape: one import root, and imports that only point down.

handlers <- workers <- ingest (and the dashboard) <- the command line, the composition root;
settings and logging are leaves; the public names re-export the handler API only.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = {
    "loops_webhooks.handlers": REPO_ROOT / "handlers",
    "loops_webhooks.workers": REPO_ROOT / "workers",
    "loops_webhooks.ingest": REPO_ROOT / "ingest",
}

LEAVES = {"loops_webhooks.settings", "loops_webhooks.logs", "loops_webhooks.redis_url"}
USER_CODE = {"loops_webhooks.handlers.examples"}
"""Written as a shop's handler module is: against the public names only."""
PUBLIC_API = {
    "loops_webhooks",
    "loops_webhooks.effects",
    "loops_webhooks.events",
    "loops_webhooks.testing",
}
EDGES = ("loops_webhooks.ingest", "loops_webhooks.dashboard")

ALLOWED: dict[str, set[str]] = {
    "handlers": {"handlers", "leaf"},
    "workers": {"handlers", "workers", "leaf"},
    "edge": {"workers", "edge", "leaf"},
    "leaf": {"leaf"},
    "api": {"handlers"},
    "user": {"api"},
    "bootstrap": set(),
    "cli": {"handlers", "workers", "edge", "leaf", "api", "cli"},
}


def layer_of(module: str) -> str:
    if module == "loops_webhooks.bootstrap":
        return "bootstrap"
    if module in LEAVES:
        return "leaf"
    if module in USER_CODE:
        return "user"
    if module in PUBLIC_API:
        return "api"
    for root, name in (
        ("loops_webhooks.handlers", "handlers"),
        ("loops_webhooks.workers", "workers"),
        *((edge, "edge") for edge in EDGES),
    ):
        if module == root or module.startswith(root + "."):
            return name
    return "cli"


def edge_of(module: str) -> str | None:
    """Which edge package a module belongs to: two edges never import each other."""
    for edge in EDGES:
        if module == edge or module.startswith(edge + "."):
            return edge
    return None


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    folders = {"loops_webhooks": REPO_ROOT / "loops_webhooks", **PACKAGE_FOLDERS}
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            if package == "loops_webhooks" and relative.parts[0] in (
                "handlers",
                "workers",
                "ingest",
            ):
                continue  # the symlinks to the folders above
            parts = [part for part in relative.parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every loops_webhooks module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "loops_webhooks"}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name refers to (``from a import b`` may name a module
    or an attribute of one)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_the_layers_cover_the_known_modules() -> None:
    modules = project_modules()

    assert layer_of("loops_webhooks.cli") == "cli"
    assert {"loops_webhooks.handlers.router", "loops_webhooks.workers.dispatch"} <= set(modules)
    assert "loops_webhooks.ingest.app" in modules


def test_every_import_points_down_the_layers() -> None:
    modules = project_modules()
    wrong = []
    for module, path in sorted(modules.items()):
        for imported in sorted(imports_of(path)):
            target = resolve(imported, modules)
            if target is None or target == module or target == "loops_webhooks":
                if target == "loops_webhooks" and layer_of(module) not in ("cli", "api", "user"):
                    wrong.append(f"{module} imports the package root")
                continue
            source_layer, target_layer = layer_of(module), layer_of(target)
            if target_layer not in ALLOWED[source_layer]:
                wrong.append(f"{module} ({source_layer}) imports {target} ({target_layer})")
            elif source_layer == target_layer == "edge" and edge_of(module) != edge_of(target):
                wrong.append(f"{module} imports another edge, {target}")

    assert wrong == []


def readme_tree() -> dict[str, str]:
    """The README's package tree: the text it gives each package, by dotted name. A line
    ``name/`` at the left opens a package, ``  name/`` one of its subpackages; deeper
    indented lines continue the entry above them."""
    readme = (REPO_ROOT / "README.md").read_text()
    (block,) = re.findall(r"^```\n(loops_webhooks/.*?)^```", readme, re.DOTALL | re.MULTILINE)
    sections: dict[str, list[str]] = {}
    top = current = ""
    for line in block.splitlines():
        if folder := re.match(r"(\w+)/", line):
            top = current = ".".join(dict.fromkeys(["loops_webhooks", folder[1]]))
        elif subpackage := re.match(r"  (\w+)/", line):
            sections.setdefault(top, []).append(f"  {subpackage[1]}/")
            current = f"{top}.{subpackage[1]}"
        elif re.match(r"  \S", line):
            current = top
        sections.setdefault(current, []).append(line)
    return {package: "\n".join(lines) for package, lines in sections.items()}


def test_the_readme_tree_names_every_module_in_its_package() -> None:
    tree = readme_tree()
    missing = []
    for module, path in sorted(project_modules().items()):
        package, _, name = module.rpartition(".")
        if path.name == "__init__.py":
            if package and module not in tree:
                missing.append(f"{module}/ has no entry")
        elif not re.search(rf"\b{name}\b", tree.get(package, "")):
            missing.append(module)

    assert missing == []


def test_every_file_the_readme_tree_names_is_in_its_package() -> None:
    modules = project_modules()
    named = [
        f"{package}.{name}"
        for package, text in readme_tree().items()
        for name in re.findall(r"\b(\w+)\.py\b", text)
        if name != "__init__"
    ]

    assert "loops_webhooks.workers.keys" in named
    assert [module for module in named if module not in modules] == []


def test_nothing_of_ours_is_importable_under_a_name_a_shop_may_use() -> None:
    script = textwrap.dedent(
        """
        import importlib.util, sys
        names = ("handlers", "workers", "ingest")
        print([name for name in names if importlib.util.find_spec(name) is not None])
        """
    )

    found = subprocess.run(
        [sys.executable, "-c", script], cwd="/", capture_output=True, text=True, check=True
    )

    assert found.stdout.strip() == "[]"


@pytest.fixture
def shop_with_clashing_packages(tmp_path: Path) -> Path:
    """A shop's app whose own top-level packages are named handlers, workers and ingest."""
    for name in ("handlers", "workers", "ingest"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"SHOP_OWN = {name!r}\n")
    (tmp_path / "myshop").mkdir()
    (tmp_path / "myshop" / "__init__.py").write_text("")
    (tmp_path / "myshop" / "webhooks.py").write_text(
        textwrap.dedent(
            """
            import handlers, ingest, workers
            from loops_webhooks import HandlerContext, Router
            from loops_webhooks.events import CheckoutSessionEvent

            assert handlers.SHOP_OWN == "handlers" and workers.SHOP_OWN == "workers"
            assert ingest.SHOP_OWN == "ingest"
            router = Router()


            @router.on("checkout.session.completed")
            async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
                pass
            """
        )
    )
    return tmp_path


def test_a_shop_with_its_own_handlers_workers_and_ingest_packages_loads_its_router(
    shop_with_clashing_packages: Path,
) -> None:
    script = (
        "from loops_webhooks.workers.registry import load_router\n"
        "print([h.name for h in load_router('myshop.webhooks:router').handlers])"
    )
    env = {**os.environ, "PYTHONPATH": str(shop_with_clashing_packages)}

    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=shop_with_clashing_packages,
        env=env,
        capture_output=True,
        text=True,
    )

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "['myshop.webhooks:fulfil']"


def test_the_command_line_runs_beside_a_shop_with_clashing_package_names(
    shop_with_clashing_packages: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(shop_with_clashing_packages)}
    command = Path(sys.executable).parent / "loops-webhooks"

    shown = subprocess.run(
        [str(command), "--help"],
        cwd=shop_with_clashing_packages,
        env=env,
        capture_output=True,
        text=True,
    )

    assert shown.returncode == 0, shown.stderr
    assert "usage: loops-webhooks" in shown.stdout
