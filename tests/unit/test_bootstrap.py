"""The quick start's bootstrap: usage errors, and no reinstall while the install is current.

A full install from scratch is what ``.ci/run`` does on a fresh clone; it is not repeated here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loops_webhooks import bootstrap

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [[], ["bogus"]], ids=["nothing", "unknown command"])
def test_an_unknown_command_exits_2_with_the_usage(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loops_webhooks.bootstrap", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2
    assert "usage: python3 -m loops_webhooks.bootstrap" in result.stderr


def test_an_install_newer_than_pyproject_is_not_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    marker = tmp_path / ".venv" / ".installed"
    marker.parent.mkdir()
    marker.touch()
    os.utime(tmp_path / "pyproject.toml", (1, 1))
    monkeypatch.setattr(bootstrap, "PROJECT", tmp_path)
    monkeypatch.setattr(bootstrap, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(bootstrap, "MARKER", marker)

    python = bootstrap.install()

    assert python == tmp_path / ".venv" / "bin" / "python"
    assert not python.exists(), "a virtual environment was created although the install was current"
