"""Settings come from the environment once, with safe defaults, and never show the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from loops_webhooks.settings import ConfigurationError, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LOOPS_* or REDIS_URL from the machine running the tests leaks into these."""
    for name in list(os.environ):
        if name.startswith("LOOPS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


def test_the_webhook_path_defaults_to_webhooks_loops():
    assert Settings().webhook_path == "/webhooks/loops"


def test_the_body_limit_defaults_to_one_mebibyte():
    assert Settings().max_body_bytes == 1024 * 1024


def test_the_dedupe_window_defaults_to_seven_days():
    assert Settings().dedupe_ttl_seconds == 7 * 24 * 60 * 60


def test_the_redis_timeout_defaults_to_two_seconds():
    assert Settings().redis_timeout_seconds == 2.0


def test_without_redis_url_the_embedded_redis_is_meant():
    assert Settings().redis_url is None


def test_settings_are_read_from_loops_prefixed_variables(monkeypatch):
    monkeypatch.setenv("LOOPS_WEBHOOK_PATH", "/hooks")
    monkeypatch.setenv("LOOPS_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("LOOPS_DEDUPE_TTL_SECONDS", "60")
    monkeypatch.setenv("LOOPS_REDIS_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("LOOPS_DATA_DIR", "/tmp/loops-data")

    settings = Settings()

    assert settings.webhook_path == "/hooks"
    assert settings.max_body_bytes == 2048
    assert settings.dedupe_ttl_seconds == 60
    assert settings.redis_timeout_seconds == 0.5
    assert settings.data_dir == Path("/tmp/loops-data")


def test_redis_url_is_read_without_the_loops_prefix(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6379/2")

    assert Settings().redis_url == "redis://redis.internal:6379/2"


def test_one_secret_is_one_signing_secret(monkeypatch):
    monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", "whsec_one")

    assert Settings().require_webhook_secrets() == [b"whsec_one"]


def test_comma_separated_secrets_are_several_in_order(monkeypatch):
    monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", "whsec_new, whsec_old ,")

    assert Settings().require_webhook_secrets() == [b"whsec_new", b"whsec_old"]


@pytest.mark.parametrize("value", [None, "", " , "], ids=["unset", "empty", "only commas"])
def test_without_a_secret_a_configuration_error_names_the_variable(monkeypatch, value):
    if value is not None:
        monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", value)

    with pytest.raises(ConfigurationError, match="LOOPS_WEBHOOK_SECRET is not set"):
        Settings().require_webhook_secrets()


def test_the_secret_never_appears_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", "whsec_do_not_print,whsec_nor_this")

    settings = Settings()

    assert "whsec" not in repr(settings)
    assert "whsec" not in str(settings)
    assert "whsec" not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOOPS_WEBHOOK_PATH", "webhooks/loops"),
        ("LOOPS_MAX_BODY_BYTES", "0"),
        ("LOOPS_DEDUPE_TTL_SECONDS", "-1"),
        ("LOOPS_REDIS_TIMEOUT_SECONDS", "0"),
        ("LOOPS_DASHBOARD_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
    ],
)
def test_an_unusable_value_is_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    with pytest.raises(pydantic.ValidationError, match=name.removeprefix("LOOPS_").lower()):
        Settings()


def test_min_replicas_defaults_to_none_and_cannot_be_negative(monkeypatch):
    assert Settings().redis_min_replicas == 0
    monkeypatch.setenv("LOOPS_REDIS_MIN_REPLICAS", "-1")
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_the_sentinel_password_is_read_but_never_shown(monkeypatch):
    monkeypatch.setenv("LOOPS_REDIS_SENTINEL_PASSWORD", "s3ntinel")
    settings = Settings()
    assert settings.sentinel_password == "s3ntinel"
    assert "s3ntinel" not in repr(settings)


def test_trusted_proxies_are_addresses_and_networks(monkeypatch):
    assert Settings().trusted_proxies == []
    monkeypatch.setenv("LOOPS_DASHBOARD_TRUSTED_PROXIES", " 10.0.0.0/8, 192.0.2.7 ,::1")
    assert [str(network) for network in Settings().trusted_proxies] == [
        "10.0.0.0/8",
        "192.0.2.7/32",
        "::1/128",
    ]
