"""The testing kit for your handlers (``loops_webhooks.handlers.testing``), at the top level:
``from loops_webhooks.testing import make_context, make_event, run, sign, signed_request``.
"""

from loops_webhooks.handlers.testing import (
    SIGNATURE_HEADER,
    HandlerResult,
    make_context,
    make_event,
    run,
    sign,
    signed_request,
)

__all__ = [
    "SIGNATURE_HEADER",
    "HandlerResult",
    "make_context",
    "make_event",
    "run",
    "sign",
    "signed_request",
]
