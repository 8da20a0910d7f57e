"""The API handler modules are written against: route Loops events to your functions.

Importing it needs no Redis, aiohttp or arq, so a handler module is importable and testable
on its own.
"""

from loops_webhooks.handlers.context import HandlerContext
from loops_webhooks.handlers.errors import RegistrationError, Reject, RetryLater
from loops_webhooks.handlers.router import Handler, Router

__all__ = ["Handler", "HandlerContext", "RegistrationError", "Reject", "RetryLater", "Router"]
