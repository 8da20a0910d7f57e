"""After logging in, the dashboard sends the browser back to a page of its own, never away."""

import pytest

from loops_webhooks.dashboard.pages import _local_path


@pytest.mark.parametrize("target", ["/", "/events", "/dead-letters?reason=rejected", "/%09/x"])
def test_a_path_of_the_dashboard_is_kept(target: str) -> None:
    assert _local_path(target) == target


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",  # URL parsers drop the tab: it would leave as //evil.example
        "/\n/evil.example",
        "https://evil.example/",
        "evil.example",
        "",
    ],
)
def test_anything_that_could_leave_the_site_goes_to_the_overview(target: str) -> None:
    assert _local_path(target) == "/"
