"""Settings for every command, read once from the environment at the edge (the CLI) and passed down.

All variables carry the ``LOOPS_`` prefix except ``REDIS_URL``, which follows the convention
that hosting platforms already use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConfigurationError", "Settings"]

MIB = 1024 * 1024
DAY_SECONDS = 24 * 60 * 60


class ConfigurationError(Exception):
    """A setting that a command needs is missing or unusable; the message says which and how."""


class Settings(BaseSettings):
    """Every setting of loops-webhooks; the README's configuration table lists the same."""

    model_config = SettingsConfigDict(env_prefix="LOOPS_", extra="ignore", frozen=True)

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret(s) from the Loops dashboard; several, comma-separated, "
        "while one is being rotated.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL"),
        description="Redis to use; unset starts the embedded development Redis.",
    )
    data_dir: Path = Field(
        default=Path(".loops-webhooks"),
        description="Where the embedded development Redis keeps its data.",
    )
    webhook_path: str = "/webhooks/loops"
    max_body_bytes: int = Field(default=MIB, gt=0)
    dedupe_ttl_seconds: int = Field(default=7 * DAY_SECONDS, gt=0)
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The receiver closes a connection whose request headers are not complete "
        "this long after it opened (or after its last response), and answers 408 to a body "
        "not read whole within it.",
    )
    max_concurrent_bodies: int = Field(
        default=32,
        gt=0,
        description="Request bodies the receiver reads at once; a request waiting longer than "
        "the read timeout for its turn gets 503. Bounds the memory hostile clients can hold.",
    )
    queue_name: str = "loops:queue"
    handlers: str = Field(
        default="loops_webhooks.handlers.examples:router",
        description="Comma-separated module:attribute paths of the Router objects to run.",
    )
    worker_concurrency: int = Field(default=50, gt=0)
    max_attempts: int = Field(default=8, gt=0)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_delay_seconds: float = Field(default=3600.0, gt=0)
    handler_timeout_seconds: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    unhandled: Literal["done", "dead-letter"] = "done"
    poll_interval_seconds: float = Field(default=0.01, gt=0)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    reconcile_grace_seconds: float = Field(default=60.0, ge=0)
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="Worker metrics and /healthz; 0 turns it off."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the worker's metrics server binds; 0.0.0.0 to be scraped from "
        "other hosts.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("webhook_path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @property
    def webhook_secrets(self) -> list[bytes]:
        """The configured secrets in order; the first one signs, any one verifies."""
        if self.webhook_secret is None:
            return []
        raw = self.webhook_secret.get_secret_value()
        return [part.strip().encode() for part in raw.split(",") if part.strip()]

    def require_webhook_secrets(self) -> list[bytes]:
        """The secrets, or a ConfigurationError that tells the user how to set one."""
        secrets = self.webhook_secrets
        if not secrets:
            raise ConfigurationError(
                "LOOPS_WEBHOOK_SECRET is not set: copy the signing secret of your webhook "
                "endpoint from the Loops dashboard (Settings > Webhooks) into it; several "
                "secrets may be given, comma-separated, while rotating."
            )
        return secrets
