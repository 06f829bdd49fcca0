"""Web requests first: aiohttp's request handler tells :data:`stream_app.pacing.FOREGROUND`
when a request's bytes were parsed and when its handler starts, and long work gives way
in between (stream_app.pacing.Foreground: ``GET /inventory`` under a saturating stream).

A patch of aiohttp's ``RequestHandler`` class (the process's web servers: one per worker);
it only counts, and :func:`install` leaves aiohttp alone (saying why) when the methods it
wraps are not there.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web_protocol

from stream_app.pacing import Foreground

log = logging.getLogger(__name__)

_WRAPPED = "__stream_app_foreground__"


def problem() -> str | None:
    """Why aiohttp cannot be hooked (None: it can)."""
    handler = web_protocol.RequestHandler
    for name in ("data_received", "_handle_request"):
        if not callable(getattr(handler, name, None)):
            return f"aiohttp's RequestHandler has no {name}: web requests are not served first"
    if not hasattr(handler, "_request_count"):  # (a slot: a descriptor on the class)
        return "aiohttp's RequestHandler counts no requests: web requests are not served first"
    return None


def install(foreground: Foreground) -> bool:
    """Hook aiohttp's request handler to ``foreground`` (once per process); False, logged,
    when aiohttp cannot be hooked."""
    handler: Any = web_protocol.RequestHandler
    if getattr(handler.data_received, _WRAPPED, None) is foreground:
        return True
    found = problem()
    if found is not None:
        log.warning("%s", found)
        return False
    received = getattr(handler.data_received, "__wrapped__", handler.data_received)
    handle = getattr(handler._handle_request, "__wrapped__", handler._handle_request)

    def data_received(self: Any, data: bytes) -> None:
        before = self._request_count
        received(self, data)
        if self._request_count != before:
            foreground.arrived(self._request_count - before)

    async def _handle_request(self: Any, request: Any, start_time: Any, request_handler: Any) -> Any:
        foreground.started()
        return await handle(self, request, start_time, request_handler)

    for wrapper, original in ((data_received, received), (_handle_request, handle)):
        setattr(wrapper, "__wrapped__", original)  # noqa: B010 (a function, not a type)
        setattr(wrapper, _WRAPPED, foreground)
    handler.data_received = data_received
    handler._handle_request = _handle_request
    return True
