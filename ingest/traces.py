"""Webhook requests as spans (the ``otel`` extra): imported only when traces are on.

Each request to the webhook path is a SERVER span named and described by the HTTP semantic
conventions, continuing the trace context the sender sent (read by the configured
propagators: W3C ``traceparent`` unless ``OTEL_PROPAGATORS`` says otherwise). The span's own
``traceparent`` is handed to the view, which stores it with the event in the same write, so
the worker's attempts join this trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from loops_webhooks.workers.traces import STORED_CONTEXT

__all__ = ["TracedView", "traced"]

TracedView = Callable[[web.Request, str], Awaitable[web.Response]]
"""A view that takes the request span's ``traceparent`` to store with the event."""


def traced(
    view: TracedView, tracer: Tracer, route: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``view`` inside a span per request; 5xx answers end it with status ERROR."""
    name = f"POST {route}"

    async def traced_view(request: web.Request) -> web.Response:
        with tracer.start_as_current_span(
            name,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=_request_attributes(request, route),
        ) as span:
            carrier: dict[str, str] = {}
            STORED_CONTEXT.inject(carrier)
            response = await view(request, carrier.get("traceparent", ""))
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_attribute("error.type", str(response.status))
                span.set_status(Status(StatusCode.ERROR))
        return response

    return traced_view


def _request_attributes(request: web.Request, route: str) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if request.url.host:
        attributes["server.address"] = request.url.host
    if request.url.port is not None:
        attributes["server.port"] = request.url.port
    if request.remote:
        attributes["client.address"] = request.remote
    user_agent = request.headers.get("User-Agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes
