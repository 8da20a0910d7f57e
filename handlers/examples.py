"""Example handlers for the three checkout events, and the default ``LOOPS_HANDLERS``.

Written as a shop's own module is, against the public names only. They log ids that are
not personal data (order, checkout session; the context binds the event's): never a
customer's id, email or name, which logs must not hold. Copy it to start your own
and point ``LOOPS_HANDLERS`` at its router, e.g.
``LOOPS_HANDLERS=myshop.webhooks:router``.
"""

from loops_webhooks import HandlerContext, Reject, Router
from loops_webhooks.events import CheckoutSessionEvent

__all__ = ["router"]

router = Router()


@router.on("checkout.session.completed")
async def fulfil_order(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    """Fulfil the order the customer just paid for.

    The same event may run more than once (retries, redeliveries, replays), so real
    fulfilment should record ``ctx.idempotency_key`` with the order, or pass it on to the
    API it calls, and do nothing when it has seen that key before.
    """
    session = event.data
    order_id = session.metadata.get("orderId")
    if order_id is None:
        raise Reject(f"checkout session {session.id} has no orderId in its metadata")
    ctx.log.info(
        "order fulfilled",
        order_id=order_id,
        checkout_session_id=session.id,
    )


@router.on("checkout.session.expired")
async def release_order(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    """Release whatever was held for an order the customer never paid for."""
    session = event.data
    ctx.log.info(
        "checkout session expired",
        order_id=session.metadata.get("orderId"),
        checkout_session_id=session.id,
    )


@router.on("checkout.session.failed")
async def note_failed_payment(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    """Record a failed payment; the customer may still retry in a new session."""
    session = event.data
    ctx.log.warning(
        "payment failed",
        order_id=session.metadata.get("orderId"),
        checkout_session_id=session.id,
    )
