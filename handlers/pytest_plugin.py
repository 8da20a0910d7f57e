"""The pytest plugin of the testing kit, loaded by pytest wherever loops-webhooks is installed.

Its fixtures are the kit's builders, for tests that prefer fixtures to imports:
``loops_event("checkout.session.completed", data={...})`` is ``make_event`` and
``loops_context(event, handler=..., attempt=...)`` is ``make_context``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loops_webhooks.handlers.context import HandlerContext
from loops_webhooks.handlers.events import Event
from loops_webhooks.handlers.testing import make_context, make_event

__all__ = ["loops_context", "loops_event"]


@pytest.fixture
def loops_event() -> Callable[..., Event]:
    """``make_event``: a realistic Loops event of a type, with a fresh id."""
    return make_event


@pytest.fixture
def loops_context() -> Callable[..., HandlerContext]:
    """``make_context``: the HandlerContext the worker would pass for an event."""
    return make_context
