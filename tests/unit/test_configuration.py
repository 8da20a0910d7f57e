"""Configuration fails fast and by name: a misspelt LOOPS_ variable or a malformed REDIS_URL
stops every command with exit 2 and one line, while a shop's own LOOPS_ variables are left
alone; each process logs its effective settings with secrets redacted."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from loops_webhooks.cli import main
from loops_webhooks.redis_url import check_redis_url
from loops_webhooks.settings import (
    ConfigurationError,
    Settings,
    effective_settings,
    environment_names,
    read_settings,
)

EVERY_COMMAND = [
    ["serve"],
    ["worker"],
    ["dev"],
    ["handlers"],
    ["send", "checkout.session.completed"],
    ["events", "show", "evt_1"],
    ["events", "list"],
    ["dlq", "list"],
    ["dlq", "show", "evt_1"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "--all"],
    ["stats"],
    ["stop-redis"],
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LOOPS_* or REDIS_URL of the machine leaks in; logging is put back afterwards."""
    for name in list(os.environ):
        if name.upper().startswith("LOOPS_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def test_the_names_read_are_derived_from_the_model_with_its_aliases() -> None:
    names = environment_names()

    assert names["REDIS_URL"] == "redis_url"
    assert names["LOOPS_MAX_ATTEMPTS"] == "max_attempts"
    assert "LOOPS_REDIS_URL" not in names
    assert set(names.values()) == set(Settings.model_fields)


def test_a_misspelt_setting_is_an_error_naming_the_valid_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPS_MAX_ATEMPTS", "3")

    with pytest.raises(ConfigurationError) as caught:
        read_settings()

    assert str(caught.value) == (
        "LOOPS_MAX_ATEMPTS is not a setting; did you mean LOOPS_MAX_ATTEMPTS?"
    )


def test_redis_url_under_the_loops_prefix_is_pointed_to_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPS_REDIS_URL", "redis://localhost:6379/0")

    with pytest.raises(ConfigurationError, match="did you mean REDIS_URL"):
        read_settings()


@pytest.mark.parametrize(
    "name", ["LOOPS_API_KEY", "LOOPS_SHOP_NAME", "LOOPS_API_URL", "LOOPS_WEBHOOK_ID"]
)
def test_a_shops_own_loops_variable_is_left_alone_and_reported_as_unread(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "sk_live_not_ours")

    settings, unread = read_settings()

    assert unread == [name]
    assert settings == Settings()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "does not start with a scheme"),
        ("http://localhost:6379", "scheme 'http' is not one Redis accepts"),
        ("redis://:hunter2@localhost:port/0", "port is not a number"),
        ("redis://localhost:6379/zero", "database 'zero' is not a number"),
        ("redis:///0", "names no host"),
        ("unix://", "names no socket path"),
    ],
)
def test_a_malformed_redis_url_is_one_line_naming_redis_url_and_the_accepted_forms(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)

    with pytest.raises(ConfigurationError) as caught:
        read_settings()

    message = str(caught.value)
    assert message.startswith("invalid configuration: REDIS_URL: not a Redis URL: ")
    assert problem in message
    assert "accepted forms: redis://[[user]:password@]host[:port][/db], rediss://" in message
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://user:pw@redis.internal",
        "rediss://:pw@redis.example.com:6380/2",
        "unix:///var/run/redis.sock?db=1",
        "redis+sentinel://sentinel-a:26379,sentinel-b:26379/mymaster/0",
        "rediss+sentinel://:pw@sentinel:26379/mymaster",
    ],
)
def test_every_accepted_form_of_redis_url_is_accepted(url: str) -> None:
    assert check_redis_url(url) == url


def test_a_field_error_names_the_environment_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPS_MAX_ATTEMPTS", "0")

    with pytest.raises(ConfigurationError) as caught:
        read_settings()

    assert str(caught.value) == (
        "invalid configuration: LOOPS_MAX_ATTEMPTS: Input should be greater than 0 (got '0')"
    )


def test_the_effective_settings_hide_the_secret_and_the_redis_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", "whsec_never_shown")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis.internal:6379/0")

    shown = effective_settings(read_settings()[0])

    assert shown["LOOPS_WEBHOOK_SECRET"] == "***"
    assert shown["REDIS_URL"] == "redis://:***@redis.internal:6379/0"
    assert shown["LOOPS_MAX_ATTEMPTS"] == 8
    assert "whsec_never_shown" not in repr(shown)
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=" ".join)
def test_a_misspelt_setting_stops_every_command_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setenv("LOOPS_MAX_ATEMPTS", "3")

    assert main(argv) == 2

    assert capsys.readouterr().err == (
        "loops-webhooks: LOOPS_MAX_ATEMPTS is not a setting; did you mean LOOPS_MAX_ATTEMPTS?\n"
    )


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=" ".join)
def test_a_malformed_redis_url_stops_every_command_with_exit_2_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis//localhost:6379")

    assert main(argv) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("loops-webhooks: invalid configuration: REDIS_URL: not a Redis URL")
    assert "accepted forms" in line


def test_the_effective_settings_are_logged_once_at_debug_by_a_one_shot_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPS_LOG_LEVEL", "debug")
    monkeypatch.setenv("LOOPS_LOG_FORMAT", "json")
    monkeypatch.setenv("LOOPS_API_KEY", "sk_live_shop")
    monkeypatch.setenv("LOOPS_WEBHOOK_SECRET", "whsec_never_shown")

    assert main(["handlers"]) == 0

    err = capsys.readouterr().err
    assert err.count('"event":"effective settings"') == 1
    assert '"level":"debug"' in err
    assert '"names":["LOOPS_API_KEY"]' in err
    assert "whsec_never_shown" not in err
    assert "sk_live_shop" not in err
