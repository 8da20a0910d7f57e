"""The shop's handlers: one, whose name and log line deploy/smoke.sh looks for."""

from loops_webhooks import HandlerContext, Router
from loops_webhooks.events import CheckoutSessionEvent

__all__ = ["router"]

router = Router()


@router.on("checkout.session.completed", name="smoke_shop_fulfil")
async def fulfil(event: CheckoutSessionEvent, ctx: HandlerContext) -> None:
    ctx.log.info("smoke shop fulfilled", order_id=event.data.metadata.get("orderId"))
