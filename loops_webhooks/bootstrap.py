"""The README's two commands, with nothing but Python 3.11 on the machine.

``python3 -m loops_webhooks.bootstrap dev`` (or ``test``) creates ``.venv`` beside the
project if needed, installs the project and its test tools into it (again whenever
``pyproject.toml`` changed), then runs the service in development mode, or the tests. It uses
the standard library only, since it runs before anything is installed; the Makefile's targets
and ``.ci/run`` call it too, so the install steps have one home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

PROJECT = Path(__file__).resolve().parent.parent
VENV = PROJECT / ".venv"
MARKER = VENV / ".installed"
USAGE = "usage: python3 -m loops_webhooks.bootstrap {install,dev,test} [arguments...]"


def install() -> Path:
    """The virtual environment's Python, with the project installed (editable) and current."""
    python = VENV / "bin" / "python"
    pyproject = PROJECT / "pyproject.toml"
    if MARKER.exists() and MARKER.stat().st_mtime >= pyproject.stat().st_mtime:
        return python
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print("installing loops-webhooks and its test tools into .venv", file=sys.stderr)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{PROJECT}[test]"], check=True)
    MARKER.touch()
    return python


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("install", "dev", "test"):
        print(USAGE, file=sys.stderr)
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 (runs before anything checks the version)
        print("loops-webhooks needs Python 3.11 or newer", file=sys.stderr)
        return 2
    try:
        python = install()
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"loops-webhooks: installing into {VENV} failed: {error}", file=sys.stderr)
        return 1
    command, rest = args[0], args[1:]
    if command == "install":
        return 0
    os.chdir(PROJECT)
    if command == "dev":
        program = str(VENV / "bin" / "loops-webhooks")
        os.execv(program, [program, "dev", *rest])
    os.execv(str(python), [str(python), "-m", "pytest", "-q", *rest])


if __name__ == "__main__":
    sys.exit(main())
