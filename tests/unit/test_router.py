import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loops_webhooks.handlers import HandlerContext, RegistrationError, Router
from loops_webhooks.handlers.events import CheckoutSessionEvent, Event
from loops_webhooks.handlers.router import pattern_warnings


async def handle(event: Any, ctx: HandlerContext) -> None:
    pass


def routed(*patterns: str) -> Router:
    router = Router()
    for index, pattern in enumerate(patterns):
        router.on(pattern, name=f"handler-{index}")(handle)
    return router


def names(router: Router, event_type: str) -> list[str]:
    return [handler.name for handler in router.handlers_for(event_type)]


def test_an_exact_pattern_matches_only_its_own_event_type() -> None:
    router = routed("checkout.session.completed")

    assert names(router, "checkout.session.completed") == ["handler-0"]
    assert names(router, "checkout.session.expired") == []
    assert names(router, "checkout.session.completed.v2") == []


def test_a_trailing_wildcard_matches_every_checkout_session_event() -> None:
    router = routed("checkout.session.*")

    for event_type in ("completed", "expired", "failed"):
        assert names(router, f"checkout.session.{event_type}") == ["handler-0"]
    assert names(router, "checkout.session") == []
    assert names(router, "refund.created") == []


def test_a_star_matches_any_run_of_characters_including_dots() -> None:
    router = routed("checkout.*")

    assert names(router, "checkout.session.completed") == ["handler-0"]


def test_a_lone_star_matches_every_event_type() -> None:
    router = routed("*")

    assert names(router, "checkout.session.failed") == ["handler-0"]
    assert names(router, "anything.else") == ["handler-0"]


def test_question_marks_and_brackets_in_a_pattern_match_only_themselves() -> None:
    router = routed("checkout.?", "checkout.[ab]")

    assert names(router, "checkout.x") == []
    assert names(router, "checkout.a") == []
    assert names(router, "checkout.?") == ["handler-0"]
    assert names(router, "checkout.[ab]") == ["handler-1"]


def test_every_matching_handler_is_returned_in_registration_order() -> None:
    router = routed("*", "checkout.session.completed", "refund.*", "checkout.session.*")

    assert names(router, "checkout.session.completed") == ["handler-0", "handler-1", "handler-3"]


def test_handlers_lists_every_handler_in_registration_order() -> None:
    router = routed("b", "a", "*")

    assert [handler.pattern for handler in router.handlers] == ["b", "a", "*"]


def test_on_returns_the_decorated_function_unchanged() -> None:
    router = Router()

    assert router.on("*")(handle) is handle


def test_a_handler_is_named_after_its_module_and_qualified_name_by_default() -> None:
    router = Router()
    router.on("*")(handle)

    assert router.handlers[0].name == f"{__name__}:handle"


def test_an_explicit_name_replaces_the_default_name() -> None:
    router = Router()
    router.on("*", name="fulfil")(handle)

    assert router.handlers[0].name == "fulfil"


def test_max_attempts_and_timeout_are_recorded_on_the_handler() -> None:
    router = Router()
    router.on("*", max_attempts=3, timeout=5)(handle)

    handler = router.handlers[0]
    assert (handler.max_attempts, handler.timeout) == (3, 5.0)


def test_max_attempts_and_timeout_default_to_none_so_the_worker_decides() -> None:
    router = Router()
    router.on("*")(handle)

    handler = router.handlers[0]
    assert (handler.max_attempts, handler.timeout) == (None, None)


def test_registering_something_that_is_not_callable_fails() -> None:
    router = Router()

    with pytest.raises(RegistrationError, match="must be callable"):
        router.on("*")("not a function")  # type: ignore[type-var]


def test_using_on_without_a_pattern_fails_with_a_hint() -> None:
    router = Router()

    with pytest.raises(RegistrationError, match=r"not @router\.on"):
        router.on(handle)  # type: ignore[arg-type]


def test_a_misspelled_option_fails_with_a_did_you_mean_hint() -> None:
    router = Router()

    with pytest.raises(RegistrationError, match=r"'max_attempt'.*did you mean 'max_attempts'\?"):
        router.on("*", max_attempt=3)


def test_an_unknown_option_with_no_close_match_lists_the_valid_options() -> None:
    router = Router()

    with pytest.raises(RegistrationError, match="valid options: name, max_attempts, timeout"):
        router.on("*", queue="high")


def test_two_handlers_with_one_name_fail() -> None:
    router = Router()
    router.on("checkout.session.completed", name="fulfil")(handle)

    with pytest.raises(RegistrationError, match="two handlers are named 'fulfil'"):
        router.on("checkout.session.expired", name="fulfil")(handle)


def test_one_function_registered_twice_without_names_fails() -> None:
    router = Router()
    router.on("checkout.session.completed")(handle)

    with pytest.raises(RegistrationError, match="pass name="):
        router.on("checkout.session.expired")(handle)


def test_including_a_router_with_a_clashing_name_fails_and_adds_nothing() -> None:
    router = routed("a")
    other = Router()
    other.on("b", name="unique")(handle)
    other.on("c", name="handler-0")(handle)

    with pytest.raises(RegistrationError, match="two handlers are named 'handler-0'"):
        router.include(other)
    assert [handler.name for handler in router.handlers] == ["handler-0"]


@pytest.mark.parametrize("max_attempts", [0, -1, 1.5, True, "3"])
def test_max_attempts_must_be_an_integer_of_at_least_one(max_attempts: Any) -> None:
    with pytest.raises(RegistrationError, match="max_attempts must be an integer >= 1"):
        Router().on("*", max_attempts=max_attempts)


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, math.inf, "5"])
def test_timeout_must_be_a_positive_number_of_seconds(timeout: Any) -> None:
    with pytest.raises(RegistrationError, match="timeout must be a number of seconds > 0"):
        Router().on("*", timeout=timeout)


def test_an_empty_pattern_fails() -> None:
    with pytest.raises(RegistrationError, match="empty pattern"):
        Router().on("")


def no_arguments() -> None:
    pass


def event_only(event: Event) -> None:
    pass


def three_required(event: Event, ctx: HandlerContext, extra: int) -> None:
    pass


def keyword_only_ctx(event: Event, *, ctx: HandlerContext) -> None:
    pass


@pytest.mark.parametrize("func", [no_arguments, event_only, three_required, keyword_only_ctx])
def test_a_handler_that_cannot_take_event_and_ctx_positionally_fails(func: Any) -> None:
    with pytest.raises(RegistrationError, match=r"must accept \(event, ctx\)"):
        Router().on("*")(func)


def with_default(event: Event, ctx: HandlerContext, retries: int = 3) -> None:
    pass


def star_args(*args: Any) -> None:
    pass


@pytest.mark.parametrize("func", [with_default, star_args])
def test_a_handler_with_extra_optional_parameters_is_accepted(func: Any) -> None:
    router = Router()
    router.on("*")(func)

    assert router.handlers[0].func is func


def test_registration_error_is_a_value_error() -> None:
    assert issubclass(RegistrationError, ValueError)


def test_include_appends_the_other_routers_handlers_after_its_own() -> None:
    router = routed("a")
    other = Router()
    other.on("b", name="b")(handle)
    other.on("c", name="c")(handle)

    router.include(other)

    assert [handler.name for handler in router.handlers] == ["handler-0", "b", "c"]
    assert [handler.name for handler in other.handlers] == ["b", "c"]


def sync_handler(event: Event, ctx: HandlerContext) -> None:
    pass


class AsyncCallable:
    async def __call__(self, event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
        pass


def test_an_async_def_handler_is_marked_async() -> None:
    router = Router()
    router.on("*")(handle)

    assert router.handlers[0].is_async


def test_a_plain_def_handler_is_marked_sync() -> None:
    router = Router()
    router.on("*")(sync_handler)

    assert not router.handlers[0].is_async


def test_a_callable_object_with_an_async_call_method_is_marked_async() -> None:
    router = Router()
    router.on("*", name="callable")(AsyncCallable())

    assert router.handlers[0].is_async


def test_the_event_model_comes_from_the_first_parameters_annotation() -> None:
    router = Router()
    router.on("*", name="callable")(AsyncCallable())
    router.on("*")(sync_handler)

    assert [handler.event_model for handler in router.handlers] == [CheckoutSessionEvent, Event]


def untyped(event, ctx):  # type: ignore[no-untyped-def]
    pass


def annotated_with_dict(event: dict[str, Any], ctx: HandlerContext) -> None:
    pass


def annotated_with_unknown_name(event: "NoSuchModel", ctx: HandlerContext) -> None:  # type: ignore[name-defined]  # noqa: F821
    pass


@pytest.mark.parametrize("func", [untyped, annotated_with_dict, annotated_with_unknown_name])
def test_a_handler_without_a_resolvable_event_annotation_has_no_event_model(func: Any) -> None:
    router = Router()
    router.on("*")(func)

    assert router.handlers[0].event_model is None


def test_a_handler_parses_into_its_annotated_model_whatever_the_event_type() -> None:
    router = Router()
    router.on("*")(sync_handler)

    assert router.handlers[0].model_for("checkout.session.completed") is Event


def test_a_handler_without_an_event_model_parses_into_the_default_model_for_the_type() -> None:
    router = Router()
    router.on("*")(untyped)

    handler = router.handlers[0]
    assert handler.model_for("checkout.session.completed") is CheckoutSessionEvent
    assert handler.model_for("refund.created") is Event


@given(st.text(min_size=1))
def test_a_pattern_equal_to_the_event_type_always_matches(event_type: str) -> None:
    assert names(routed(event_type), event_type) == ["handler-0"]


@given(st.text())
def test_a_lone_star_matches_any_event_type(event_type: str) -> None:
    assert names(routed("*"), event_type) == ["handler-0"]


@given(st.text(min_size=1).filter(lambda text: "*" not in text), st.text())
def test_a_pattern_without_a_star_matches_only_the_identical_type(
    pattern: str, event_type: str
) -> None:
    assert bool(names(routed(pattern), event_type)) == (pattern == event_type)


def test_a_pattern_one_letter_off_a_known_type_is_warned_about_with_the_likely_type() -> None:
    router = Router()

    @router.on("checkout.session.complete", name="fulfil")
    async def fulfil(event: object, ctx: object) -> None: ...

    assert pattern_warnings(router) == [
        "handler 'fulfil': pattern 'checkout.session.complete' matches no known Loops event "
        "type; did you mean 'checkout.session.completed'?"
    ]


def test_a_pattern_far_from_every_known_type_is_warned_about_with_the_known_types() -> None:
    router = Router()

    @router.on("invoice.paid", name="bill")
    async def bill(event: object, ctx: object) -> None: ...

    [warning] = pattern_warnings(router)
    assert "known types: checkout.session.completed, checkout.session.expired" in warning


@pytest.mark.parametrize(
    "pattern", ["checkout.session.completed", "checkout.session.*", "*", "*.failed"]
)
def test_a_pattern_matching_a_known_type_gets_no_warning(pattern: str) -> None:
    router = Router()

    @router.on(pattern, name="ok")
    async def ok(event: object, ctx: object) -> None: ...

    assert pattern_warnings(router) == []
    assert router.handlers[0].known_event_types


def test_concurrency_and_rate_are_kept_on_the_handler() -> None:
    router = Router()
    router.on("refund.created", name="erp", concurrency=3, rate="20/m")(handle)

    (handler,) = router.handlers
    assert handler.concurrency == 3
    assert (handler.rate.limit, handler.rate.per_seconds) == (20, 60)  # type: ignore[union-attr]
    assert str(handler.rate) == "20/m"


def test_a_handler_without_limits_has_none() -> None:
    (handler,) = routed("refund.created").handlers

    assert (handler.concurrency, handler.rate) == (None, None)


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "2"])
def test_a_concurrency_that_is_not_a_positive_integer_is_refused_at_registration(
    concurrency: Any,
) -> None:
    with pytest.raises(RegistrationError, match="concurrency must be an integer >= 1"):
        Router().on("refund.created", concurrency=concurrency)


@pytest.mark.parametrize("rate", ["0/s", "5", "5/h", "5 /s", "-1/m", "1.5/s", 5, "/s", "05/s"])
def test_a_rate_not_written_n_per_second_or_minute_is_refused_at_registration(
    rate: Any,
) -> None:
    with pytest.raises(RegistrationError, match='rate must be "N/s" or "N/m"'):
        Router().on("refund.created", rate=rate)


def test_a_misspelled_limit_option_is_named_with_its_likely_meaning() -> None:
    with pytest.raises(RegistrationError, match="did you mean 'concurrency'"):
        Router().on("refund.created", concurency=2)
