"""loops-webhooks: receive Loops webhooks and run your handlers for them, reliably.

A handler module needs only this package's top level and ``loops_webhooks.events``::

    from loops_webhooks import HandlerContext, Reject, RetryLater, Router
    from loops_webhooks.events import CheckoutSessionEvent

Those names load no aiohttp, arq or redis. They are resolved on first use (PEP 562) rather
than at import, because ``python3 -m loops_webhooks.bootstrap`` imports this package with a
bare Python, before pydantic or anything else is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loops_webhooks.handlers import (
        HandlerContext,
        RegistrationError,
        Reject,
        RetryLater,
        Router,
    )

__all__ = ["HandlerContext", "RegistrationError", "Reject", "RetryLater", "Router"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("loops_webhooks.handlers"), name)
    raise AttributeError(f"module 'loops_webhooks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
