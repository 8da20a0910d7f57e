"""Settings for every command, read once from the environment at the edge (the CLI) and passed down.

All variables carry the ``LOOPS_`` prefix except ``REDIS_URL``, which follows the convention
that hosting platforms already use.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loops_webhooks.redis_url import check_redis_url, redacted_url

__all__ = [
    "ConfigurationError",
    "Settings",
    "effective_settings",
    "read_settings",
]

MIB = 1024 * 1024
DAY_SECONDS = 24 * 60 * 60
MIN_DASHBOARD_TOKEN_LENGTH = 32
"""Characters: a shorter token is refused at start (guessing it online must stay hopeless)."""

RECEIVER_METRICS_PORT, WORKER_METRICS_PORT = 8082, 8083
"""The metrics ports when ``LOOPS_METRICS_PORT`` is unset: one per role, so that ``serve``
and ``worker`` on one host do not collide, beside the webhook port (8080) and the
dashboard's (8081), and outside 9100-9999, the range Prometheus hands out to exporters
(9100 is node_exporter's)."""


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
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="The Sentinels' own password, for a redis+sentinel:// REDIS_URL.",
    )
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must confirm (WAIT) an event before the receiver answers 2xx.",
    )
    data_dir: Path = Field(
        default=Path(".loops-webhooks"),
        description="Where the embedded development Redis keeps its data.",
    )
    webhook_path: str = "/webhooks/loops"
    max_body_bytes: int = Field(default=MIB, gt=0)
    dedupe_ttl_seconds: int = Field(default=7 * DAY_SECONDS, gt=0)
    search_metadata_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("orderId",),
        description="Comma-separated keys of an event's data.metadata that it can be found by "
        "(with its checkout session id and customer); empty: none.",
    )
    replay_history_limit: int = Field(
        default=10,
        ge=0,
        description="Handler states that replays replaced, kept per event and handler "
        "(the newest ones).",
    )
    dead_letter_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Dead letters older than this are purged, and their events then expire "
        "like finished ones; unset keeps them until replayed or purged.",
    )
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
    ordering: bool = Field(
        default=True,
        description="One handler runs one checkout session's events one at a time, the "
        "earliest created first; off lets them run in any order, at once.",
    )
    poll_interval_seconds: float = Field(default=0.01, gt=0)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    reconcile_grace_seconds: float = Field(default=60.0, ge=0)
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Where /metrics listens; 0.0.0.0 in a container, for Prometheus to reach.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=f"/metrics and /healthz of the receiver (unset: {RECEIVER_METRICS_PORT}) "
        f"or a worker (unset: {WORKER_METRICS_PORT}); 0 turns them off.",
    )
    dashboard_token: SecretStr | None = Field(
        default=None,
        description="The dashboard's login and API token; required by `dashboard`.",
    )
    dashboard_read_only: bool = Field(
        default=False,
        description="The dashboard refuses replay, purge, pause, resume and retry now (403).",
    )
    dashboard_trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or CIDRs of the proxies in front of the "
        "dashboard: from those peers only, the client address is read from X-Forwarded-For.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("webhook_path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("search_metadata_keys", mode="before")
    @classmethod
    def _metadata_keys_are_names(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
        for name in names:
            if "=" in name or len(name) > 100:
                raise ValueError(f"{name!r}: a key holds no '=' and at most 100 characters")
        return names

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_an_accepted_form(cls, value: str | None) -> str | None:
        return check_redis_url(value) if value else value

    @field_validator("dashboard_trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{part.strip()!r} is not an IP address or CIDR") from None
        return value

    @property
    def trusted_proxies(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``LOOPS_DASHBOARD_TRUSTED_PROXIES`` as networks (an address is a /32 or /128)."""
        parts = (part.strip() for part in self.dashboard_trusted_proxies.split(","))
        return [ipaddress.ip_network(part, strict=False) for part in parts if part]

    @property
    def webhook_secrets(self) -> list[bytes]:
        """The configured secrets in order; the first one signs, any one verifies."""
        if self.webhook_secret is None:
            return []
        raw = self.webhook_secret.get_secret_value()
        return [part.strip().encode() for part in raw.split(",") if part.strip()]

    @property
    def receiver_metrics_port(self) -> int:
        """The receiver's metrics port; 0: none."""
        return RECEIVER_METRICS_PORT if self.metrics_port is None else self.metrics_port

    @property
    def worker_metrics_port(self) -> int:
        """A worker's metrics port; 0: none."""
        return WORKER_METRICS_PORT if self.metrics_port is None else self.metrics_port

    @property
    def sentinel_password(self) -> str | None:
        """``LOOPS_REDIS_SENTINEL_PASSWORD`` in clear, for the Redis client only."""
        if self.redis_sentinel_password is None:
            return None
        return self.redis_sentinel_password.get_secret_value()

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

    def require_dashboard_token(self) -> str:
        """The dashboard's token, or a ConfigurationError that tells the user how to set one."""
        token = self.dashboard_token.get_secret_value() if self.dashboard_token else ""
        make_one = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
        if not token.strip():
            raise ConfigurationError(
                "LOOPS_DASHBOARD_TOKEN is not set: set it to a long random value (for example "
                f"`{make_one}`); the dashboard's login form and its API's "
                "`Authorization: Bearer` header take it. `--no-auth` starts without one, on "
                "a loopback host only."
            )
        if len(token.strip()) < MIN_DASHBOARD_TOKEN_LENGTH:
            raise ConfigurationError(
                f"LOOPS_DASHBOARD_TOKEN is too short ({len(token.strip())} characters): it "
                f"must have at least {MIN_DASHBOARD_TOKEN_LENGTH}; make one with `{make_one}`."
            )
        return token.strip()


# --- Reading the environment: typos, field errors and REDIS_URL fail at start, by name. ---

TYPO_CUTOFF = 0.85
"""How close (difflib's ratio, after the prefix) an unread LOOPS_ name must be to a setting's
name to be called a typo: one wrong, missing or extra letter is, a shop's own LOOPS_API_KEY
or LOOPS_SHOP_NAME (at most 0.73 from any setting) is not."""


def environment_names() -> dict[str, str]:
    """Every environment variable a setting reads (upper-case) and the field it sets: derived
    from the model's fields and aliases, so a setting added to the model is known at once."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            choices = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [f"{prefix}{field_name}"]
        names.update({choice.upper(): field_name for choice in choices})
    return names


def read_settings(environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    """The settings, and the ``LOOPS_`` variables set that no setting reads (a shop's own,
    such as LOOPS_API_KEY: left alone).

    Raises ConfigurationError, one line naming environment variables (never Python fields),
    for a variable that looks like a misspelt setting ("did you mean ...?") or a value a
    setting refuses; secrets and URLs are never repeated in it.
    """
    environ = os.environ if environ is None else environ
    prefix = Settings.model_config.get("env_prefix", "").upper()
    known = environment_names()
    stems = {name.removeprefix(prefix): name for name in known}
    typos: list[str] = []
    unread: list[str] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known:
            continue
        close = difflib.get_close_matches(
            upper.removeprefix(prefix), stems, n=1, cutoff=TYPO_CUTOFF
        )
        if close:
            typos.append(f"{name} is not a setting; did you mean {stems[close[0]]}?")
        else:
            unread.append(name)
    if typos:
        raise ConfigurationError("; ".join(typos))
    try:
        return Settings(), unread
    except pydantic.ValidationError as invalid:
        problems = [_field_problem(error, known) for error in invalid.errors()]
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


def _field_problem(error: Any, known: Mapping[str, str]) -> str:
    """One pydantic error, named by environment variable; ``known`` maps variables to fields."""
    location = str(error["loc"][0]) if error["loc"] else ""
    field = location if location in Settings.model_fields else known.get(location.upper(), "")
    variable = next((name for name, of in known.items() if of == field), location)
    message = str(error["msg"]).removeprefix("Value error, ")
    if field and not _is_secret(field) and error.get("input") is not None:
        message += f" (got {error['input']!r})"
    return f"{variable}: {message}"


def _is_secret(field: str) -> bool:
    """Fields whose values never appear in logs or messages: secret types, URLs (they may
    hold a password) and anything named like a credential."""
    annotation = str(Settings.model_fields[field].annotation)
    credential = any(word in field for word in ("secret", "password", "token", "url"))
    return credential or "SecretStr" in annotation


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its environment variable, for the one start-up log line: secrets as
    ``***`` (or None when unset), passwords cut out of URLs."""
    shown: dict[str, Any] = {}
    variables = {field: name for name, field in environment_names().items()}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if isinstance(value, str) and "://" in value:
            value = redacted_url(value)
        elif value is not None and _is_secret(field):
            value = "***"
        elif isinstance(value, Path):
            value = str(value)
        shown[variables.get(field, field)] = value
    return shown
