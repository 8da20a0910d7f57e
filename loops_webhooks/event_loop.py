"""The event loop every long-running process runs on: uvloop where it is installed.

uvloop's transports and scheduling are in C; on the receiver's and the worker's hot paths
(many small socket reads and writes to clients and Redis) the standard library's selector
loop spent a large share of the CPU (see the README's "Measured performance"). aiohttp and
arq both run on it unchanged. Where uvloop is not available (Windows), the standard loop.
"""

from __future__ import annotations

import asyncio

__all__ = ["new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop, or the standard library's where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
