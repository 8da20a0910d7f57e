import math

import pytest

from loops_webhooks.handlers import Reject, RetryLater


def test_reject_keeps_its_reason() -> None:
    error = Reject("order does not exist")

    assert (error.reason, str(error)) == ("order does not exist", "order does not exist")


def test_retry_later_keeps_its_delay_and_reason() -> None:
    error = RetryLater(30, "rate limited")

    assert (error.after, error.reason, str(error)) == (
        30,
        "rate limited",
        "retry after 30s: rate limited",
    )


def test_retry_later_needs_no_reason() -> None:
    assert RetryLater(0).reason == ""


@pytest.mark.parametrize("after", [-1, math.nan, math.inf])
def test_retry_later_rejects_a_delay_that_is_negative_or_not_finite(after: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        RetryLater(after)
