import random

from hypothesis import given
from hypothesis import strategies as st

from loops_webhooks.handlers.retry_policy import RetryPolicy

bases = st.floats(min_value=0.001, max_value=600, allow_nan=False, allow_infinity=False)
caps = st.floats(min_value=0.001, max_value=86_400, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=10_000)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=draw(st.integers(min_value=1, max_value=100)),
        base_seconds=draw(bases),
        max_delay_seconds=draw(caps),
    )


@given(policies(), attempts, st.randoms(use_true_random=False))
def test_a_delay_is_drawn_between_zero_and_the_ceiling_of_its_attempt(
    policy: RetryPolicy, attempt: int, rng: random.Random
) -> None:
    delay = policy.delay(attempt, rng)

    assert 0.0 <= delay <= policy.ceiling(attempt)


@given(policies(), attempts)
def test_the_ceiling_never_exceeds_the_maximum_delay(policy: RetryPolicy, attempt: int) -> None:
    assert policy.ceiling(attempt) <= policy.max_delay_seconds


@given(policies(), st.integers(min_value=1, max_value=200))
def test_the_ceiling_doubles_with_each_attempt_until_it_reaches_the_maximum(
    policy: RetryPolicy, attempt: int
) -> None:
    now, after = policy.ceiling(attempt), policy.ceiling(attempt + 1)

    assert after == min(policy.max_delay_seconds, now * 2)


@given(policies())
def test_the_first_ceiling_is_the_base_delay_unless_the_maximum_is_lower(
    policy: RetryPolicy,
) -> None:
    assert policy.ceiling(1) == min(policy.base_seconds, policy.max_delay_seconds)


@given(policies(), attempts)
def test_once_capped_the_ceiling_stays_at_the_maximum(policy: RetryPolicy, attempt: int) -> None:
    if policy.ceiling(attempt) == policy.max_delay_seconds:
        assert policy.ceiling(attempt + 1) == policy.max_delay_seconds


def test_a_huge_attempt_number_gives_the_maximum_delay_instead_of_overflowing() -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=5, max_delay_seconds=3600)

    assert policy.ceiling(10**9) == 3600


def test_delays_are_spread_over_the_whole_range_rather_than_bunched_at_the_ceiling() -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=5, max_delay_seconds=3600)
    rng = random.Random(1234)

    delays = [policy.delay(4, rng) for _ in range(2000)]

    assert min(delays) < 0.05 * 40
    assert max(delays) > 0.95 * 40
    assert 0.45 * 40 < sum(delays) / len(delays) < 0.55 * 40


def test_the_default_policy_allows_exactly_max_attempts_attempts() -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=5, max_delay_seconds=3600)

    assert [policy.allows_another(made) for made in range(6, 10)] == [True, True, False, False]
