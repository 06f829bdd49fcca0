"""Every error answer is JSON: ``{"error": <code>, "message": ..., "reasons": [...]}``.

* :class:`ApiView`: the base of our views; a Faust ``WebError`` raised in one (such as
  ``ServiceUnavailable`` while rebalancing) becomes that shape (503 with ``Retry-After``).
* :func:`read_json`: a request's JSON body within the size and depth bounds, else a
  :class:`BodyError` with the status (413, 400) and the reason, for every view with a body.
* :func:`json_errors`: an aiohttp middleware (that also counts every answer by route and
  status) for what never reaches a view, or escapes one: an unknown path (404), a method a path does not take (405, with ``Allow``), a body
  over the server's limit (413) and any unexpected exception (500, logged, no details).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from faust.web import Request, Response, View
from faust.web.exceptions import WebError

from stream_app.domain.preorders import json_depth

if TYPE_CHECKING:
    from stream_app.metrics import Metrics

log = logging.getLogger(__name__)

Middleware = Callable[..., Awaitable[web.StreamResponse]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def error_body(status: int, reasons: Sequence[str], code: str | None = None) -> dict[str, Any]:
    return {
        "error": code or CODES.get(status, "error"),
        "message": "; ".join(reasons),
        "reasons": list(reasons),
    }


class BodyError(Exception):
    """A request body out of bounds or not JSON: ``status`` (413 or 400) and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_json(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """The body as JSON: at most ``max_bytes`` (a larger Content-Length is refused before
    reading), nesting at most ``max_depth`` levels; else :class:`BodyError`."""
    if (getattr(request, "content_length", None) or 0) > max_bytes:
        raise BodyError(413, f"body exceeds {max_bytes} bytes")
    raw = await request.read()
    if len(raw) > max_bytes:
        raise BodyError(413, f"body exceeds {max_bytes} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BodyError(400, "body is not JSON") from None
    if json_depth(body, max_depth) > max_depth:
        raise BodyError(400, f"body nests deeper than {max_depth} levels")
    return body


def parse_count(text: str | None, default: int, minimum: int) -> int | None:
    """A query parameter that counts (``limit``, ``offset``, ``quantity``): digits only,
    at least ``minimum``; ``default`` when absent; None when it is not one ("1e23", "-1",
    "9" * 5000)."""
    if text is None or text == "":
        return default
    if len(text) > 12 or not text.isdigit():
        return None
    value = int(text)
    return value if value >= minimum else None


def unauthorized(view: View, key: str = "admin") -> Response:
    """401: the endpoint needs the ``key`` key in ``X-API-Key``."""
    return view.json(error_body(401, [f"X-API-Key with the {key} key is required"]), status=401)


def _retry_after(status: int) -> dict[str, str]:
    return {"Retry-After": "1"} if status in (429, 503) else {}


class ApiView(View):
    """A Faust view whose raised ``WebError`` answers in our error shape."""

    async def on_request_error(self, request: Request, exc: WebError) -> Response:
        status = int(exc.code)
        return self.json(
            error_body(status, [str(exc.detail)]), status=status, headers=_retry_after(status)
        )


def _json_response(status: int, reasons: Sequence[str], headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(error_body(status, reasons)),
        status=status,
        content_type="application/json",
        headers={**headers, **_retry_after(status)},
    )


def json_errors(metrics: Metrics | None = None) -> Middleware:
    """The middleware: JSON error bodies, and every answer counted by route and status
    (``stream_app_http_requests_total``) with its time (``stream_app_http_request_seconds``)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await _answer(request, handler)
        if metrics is not None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.http_requests.labels(route, str(response.status)).inc()
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    return middleware


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers: dict[str, str] = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = sorted(exc.allowed_methods)
            headers["Allow"] = ", ".join(allowed)
            reasons = [f"{request.method} is not allowed on {request.path} (allowed: "
                       f"{', '.join(allowed)})"]
        elif isinstance(exc, web.HTTPNotFound):
            reasons = [f"no endpoint {request.path}"]
        else:
            reasons = [exc.reason or CODES.get(exc.status, "error")]
        return _json_response(exc.status, reasons, headers)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json_response(500, ["internal error (logged on the worker)"], {})


def install(web_app: web.Application, metrics: Metrics | None = None) -> None:
    """Add the middleware once (before the server starts: aiohttp freezes the list)."""
    if not any(getattr(m, "__stream_app__", False) for m in web_app.middlewares):
        middleware = json_errors(metrics)
        middleware.__stream_app__ = True  # type: ignore[attr-defined]
        web_app.middlewares.append(middleware)  # type: ignore[arg-type]
