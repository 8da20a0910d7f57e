"""The development signing secret: made by ``dev`` when ``LOOPS_WEBHOOK_SECRET`` is unset,
kept in the data directory, and read back by ``send``.

A module of its own so that ``send`` finds the secret without loading what ``dev`` runs (the
file watcher, the child processes).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["dev_secret", "dev_secret_file", "kept_dev_secret"]

SECRET_FILE = "dev-webhook-secret"


def dev_secret_file(data_dir: Path) -> Path:
    """Where ``dev`` keeps its generated signing secret: ``send`` reads it from there too."""
    return data_dir / SECRET_FILE


def kept_dev_secret(path: Path) -> str | None:
    """The development signing secret kept at ``path``, if ``dev`` made one."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def dev_secret(path: Path) -> str:
    """The development signing secret kept at ``path``, created (mode 0600) on first use."""
    kept = kept_dev_secret(path)
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = "whsec_dev_" + secrets.token_hex(16)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as secret_file:
        secret_file.write(generated + "\n")
    path.chmod(0o600)
    return generated
