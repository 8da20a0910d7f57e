"""Registering handlers for event types, and finding the ones an event should run."""

import difflib
import functools
import inspect
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from loops_webhooks.handlers import events
from loops_webhooks.handlers.errors import RegistrationError
from loops_webhooks.handlers.events import Event

__all__ = ["Handler", "Rate", "Router", "pattern_warnings"]

HandlerFunc = Callable[..., Any]
F = TypeVar("F", bound=HandlerFunc)

_OPTIONS = ("name", "max_attempts", "timeout", "concurrency", "rate")

_RATE_WINDOWS = {"s": 1, "m": 60}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `limit` starts of a handler per `per_seconds` (1 or 60), across all workers."""

    limit: int
    per_seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{'s' if self.per_seconds == 1 else 'm'}"

    @classmethod
    def parse(cls, text: object) -> "Rate":
        """``"N/s"`` or ``"N/m"`` with N >= 1; anything else is a `RegistrationError`."""
        found = re.fullmatch(r"([1-9][0-9]*)/([sm])", text) if isinstance(text, str) else None
        if found is None:
            raise RegistrationError(
                f'rate must be "N/s" or "N/m" (starts per second or minute, N >= 1), got {text!r}'
            )
        return cls(int(found[1]), _RATE_WINDOWS[found[2]])


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered handler: the function and everything the worker needs to run it.

    `name` identifies the handler in retries, idempotency keys, logs and the dead-letter
    queue, so it must stay the same across deploys. `max_attempts` and `timeout` are `None`
    when the worker's defaults apply. `concurrency` (runs at once) and `rate` (starts per
    second or minute) are limits across all workers, `None` for none. `is_async` tells the
    worker to await `func` rather than run it in a thread. `event_model` is the `Event`
    subclass the function's first parameter is annotated with, if any.
    """

    name: str
    pattern: str
    func: HandlerFunc
    max_attempts: int | None
    timeout: float | None
    is_async: bool
    event_model: type[Event] | None
    concurrency: int | None = None
    rate: Rate | None = None

    def matches(self, event_type: str) -> bool:
        """Whether this handler should run for events of `event_type`."""
        return _pattern_regex(self.pattern).fullmatch(event_type) is not None

    def model_for(self, event_type: str) -> type[Event]:
        """The model to parse an event of `event_type` into before calling this handler."""
        return self.event_model or events.model_for(event_type)

    @property
    def known_event_types(self) -> list[str]:
        """The event types Loops documents that this handler's pattern matches."""
        return [event_type for event_type in events.LOOPS_EVENT_TYPES if self.matches(event_type)]


class Router:
    """A set of handlers, each bound to an event type pattern.

    Patterns are exact event types or contain `*`, which matches any run of characters,
    dots included: ``"checkout.session.*"`` and ``"*"``. No other character is special.
    Every mistake in registering raises `RegistrationError` at once, at import time.
    """

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    @property
    def handlers(self) -> tuple[Handler, ...]:
        """All handlers, in registration order."""
        return tuple(self._handlers)

    def on(
        self,
        pattern: str,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
        **options: object,
    ) -> Callable[[F], F]:
        """Register the decorated function for events whose type matches `pattern`.

        The function is called as ``func(event, ctx)`` and is returned unchanged, so it stays
        directly callable in tests. `name` defaults to ``"module:qualname"``; `max_attempts`
        and `timeout` (seconds) override the worker's defaults for this handler.
        `concurrency` caps the runs of this handler at once and `rate` (``"N/s"`` or
        ``"N/m"``) its starts per second or minute, both across all workers; work over a limit
        waits without using an attempt.
        """
        if not isinstance(pattern, str):
            raise RegistrationError(
                f"router.on() takes an event type pattern, got {pattern!r}; "
                'write @router.on("checkout.session.completed"), not @router.on'
            )
        if not pattern:
            raise RegistrationError(
                "router.on() got an empty pattern; use '*' to match every event"
            )
        if options:
            raise RegistrationError(_unknown_option_message(next(iter(options))))
        if name is not None and (not isinstance(name, str) or not name):
            raise RegistrationError(f"handler name must be a non-empty string, got {name!r}")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise RegistrationError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise RegistrationError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise RegistrationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        parsed_rate = None if rate is None else Rate.parse(rate)

        def register(func: F) -> F:
            handler = _make_handler(
                func,
                pattern=pattern,
                name=name,
                max_attempts=max_attempts,
                timeout=None if timeout is None else float(timeout),
                concurrency=concurrency,
                rate=parsed_rate,
            )
            self._check_name_is_free(handler)
            self._handlers.append(handler)
            return func

        return register

    def include(self, other: "Router") -> None:
        """Append all of `other`'s handlers, after this router's own; `other` is unchanged.

        Nothing is added if any name clashes.
        """
        if not isinstance(other, Router):
            raise RegistrationError(f"router.include() takes a Router, got {other!r}")
        for handler in other._handlers:
            self._check_name_is_free(handler)
        self._handlers.extend(other._handlers)

    def handlers_for(self, event_type: str) -> list[Handler]:
        """The handlers to run for an event of `event_type`, in registration order."""
        return [handler for handler in self._handlers if handler.matches(event_type)]

    def _check_name_is_free(self, new: Handler) -> None:
        for existing in self._handlers:
            if existing.name == new.name:
                raise RegistrationError(
                    f"two handlers are named {new.name!r} (patterns {existing.pattern!r} and "
                    f"{new.pattern!r}); pass name= to tell them apart"
                )


def pattern_warnings(router: Router) -> list[str]:
    """A warning for each handler whose pattern matches no event type Loops documents.

    Such a handler is allowed (Loops may add types), but it is most often a typo that would
    leave every event of the intended type unhandled, so the worker and ``loops-webhooks
    handlers`` say so at start.
    """
    warnings = []
    for handler in router.handlers:
        if handler.known_event_types:
            continue
        close = difflib.get_close_matches(handler.pattern, events.LOOPS_EVENT_TYPES, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else f"known types: {', '.join(events.LOOPS_EVENT_TYPES)}"
        )
        warnings.append(
            f"handler {handler.name!r}: pattern {handler.pattern!r} matches no known Loops "
            f"event type; {hint}"
        )
    return warnings


def _make_handler(
    func: object,
    *,
    pattern: str,
    name: str | None,
    max_attempts: int | None,
    timeout: float | None,
    concurrency: int | None,
    rate: Rate | None,
) -> Handler:
    if not callable(func):
        raise RegistrationError(
            f"handler for {pattern!r} must be callable, got {type(func).__name__} {func!r}"
        )
    name = name or _default_name(func)
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(None, None)
        except TypeError:
            raise RegistrationError(
                f"handler {name!r} must accept (event, ctx) as two positional arguments; "
                f"its signature is {signature}"
            ) from None
    return Handler(
        name=name,
        pattern=pattern,
        func=func,
        max_attempts=max_attempts,
        timeout=timeout,
        is_async=inspect.iscoroutinefunction(func)
        or inspect.iscoroutinefunction(type(func).__call__),
        event_model=_annotated_event_model(func, signature),
        concurrency=concurrency,
        rate=rate,
    )


def _default_name(func: HandlerFunc) -> str:
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{qualname}"


def _annotated_event_model(
    func: HandlerFunc, signature: inspect.Signature | None
) -> type[Event] | None:
    """The `Event` subclass the first parameter is annotated with, or None if unclear."""
    if signature is None or not signature.parameters:
        return None
    first = next(iter(signature.parameters))
    annotated = func if inspect.isroutine(func) else type(func).__call__
    try:
        hint = typing.get_type_hints(annotated).get(first)
    except Exception:
        return None
    if isinstance(hint, type) and issubclass(hint, Event):
        return hint
    return None


def _unknown_option_message(option: str) -> str:
    close = difflib.get_close_matches(option, _OPTIONS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid options: {', '.join(_OPTIONS)}"
    return f"router.on() got an unknown option {option!r}; {hint}"


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
