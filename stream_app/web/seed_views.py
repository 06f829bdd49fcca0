"""The webhook paths of the system this one replaces (SPEC section 7), as thin aliases.

A storefront that calls them today keeps working unchanged (with the service key in
``X-API-Key``): each alias calls the product's own endpoint on this worker (which forwards
to the owner of the key as usual) and reshapes the answer.

* ``POST /pre-order`` → ``POST /pre-orders``: the decision as is
  (``{success, orderId, reservations, waitlisted, failedItems, message}``); a validation
  error ``{success: false, error}`` (400); still pending ``{success: false, pending: true,
  orderId, statusUrl, message}`` (202).
* ``POST /check-atp`` ``{sku, locationRef, shipDate, quantity?}`` → ``GET /atp``: the seed's
  fields, its recommendation sentence, ``duration`` (ms) and ``timestamp``.
* ``POST /cancel-reservation`` ``{reservationId?, orderId?}`` → ``POST
  /reservations/{id}/cancel`` for the reservation, or every active one of the order.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from faust.web import Request, Response
from yarl import URL

from stream_app.credentials import KEY_HEADER
from stream_app.domain.ids import iso
from stream_app.web.errors import ApiView, BodyError, error_body, read_json

if TYPE_CHECKING:
    from stream_app.app import Runtime

Json = dict[str, Any]
#: a SKU or location that can name a path segment (aiohttp's ``{name}`` takes no ``{}/``)
ADDRESSABLE = re.compile(r"^[^/{}|]+$")
ACTIVE = frozenset({"RESERVED", "WAITLISTED"})


def seed_pre_order_answer(status: int, body: Json) -> Json:
    """``POST /pre-orders``' answer in the seed's shape (idempotent)."""
    if "success" in body:  # a decision (already the seed's shape)
        return body
    if status == 202:
        return {"success": False, "pending": True, **body,
                "message": "decision pending: poll statusUrl"}
    if status != 400:  # 401, 409, 413, 503: the product's error answer, marked unsuccessful
        return {"success": False, **body}
    return {"success": False, "error": body.get("message") or body.get("error") or "failed",
            **({"reasons": body["reasons"]} if body.get("reasons") else {})}


def seed_atp_answer(sku: str, location: str, body: Json, seconds: float, now: datetime) -> Json:
    """``GET /atp``'s answer in the seed's ``/check-atp`` shape."""
    quantity = int(body.get("quantity", 1))
    available = int(body.get("availableToPromise", 0))
    can = bool(body.get("canFulfill"))
    return {
        "sku": sku,
        "locationRef": location,
        "shipDate": body.get("shipDate"),
        "requestedQuantity": quantity,
        "currentInventory": body.get("currentInventory"),
        "expectedArrival": body.get("expectedArrival"),
        "totalExpected": body.get("totalExpected"),
        "existingReservations": body.get("existingReservations"),
        "overbookingLimit": body.get("overbookingLimit"),
        "availableToPromise": available,
        "canFulfill": can,
        "duration": round(seconds * 1000, 3),
        "recommendation": "Reservation can be fulfilled" if can
        else f"Insufficient inventory (need {quantity}, available {available})",
        "timestamp": iso(now),
    }


def _string(raw: Json, name: str) -> str | None:
    value = raw.get(name)
    if type(value) is int:
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def register(runtime: Runtime) -> None:
    app, settings = runtime.app, runtime.settings
    seconds = settings.pre_order_wait_seconds + 2 * settings.forward_timeout_seconds + 1

    async def call(request: Request, method: str, path: str, body: Any = None,
                   query: dict[str, str] | None = None) -> tuple[int, Json]:
        """This worker's own endpoint, with the caller's key."""
        own = URL(str(app.conf.canonical_url))
        url = own.with_path(path, encoded=True).with_query(query or {})
        headers = {KEY_HEADER: request.headers.get(KEY_HEADER, ""),
                   "Content-Type": "application/json"}
        async with app.http_client.request(
            method, url, headers=headers, data=None if body is None else orjson.dumps(body),
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            answer: Json = orjson.loads(await response.read())
            return response.status, answer

    async def json_body(view: ApiView, request: Request, *fields: str) -> Json | Response:
        """The body (a JSON object within the bounds; ``fields`` no longer than
        ``max_text_length``), else the seed's error answer."""
        try:
            body = await read_json(request, max_bytes=settings.max_request_bytes,
                                   max_depth=settings.max_json_depth)
        except BodyError as exc:
            return view.json({"success": False, **error_body(exc.status, [exc.reason])},
                             status=exc.status)
        if not isinstance(body, dict):
            return view.json({"success": False, "error": "body must be a JSON object"},
                             status=400)
        limit = settings.max_text_length
        long = [f"{name} is longer than {limit} characters" for name in fields
                if isinstance(body.get(name), str) and len(body[name]) > limit]
        if long:
            return view.json({"success": False, "error": "; ".join(long), "reasons": long},
                             status=400)
        return body

    @app.page("/pre-order")
    class SeedPreOrder(ApiView):
        async def post(self, request: Request) -> Response:
            body = await json_body(self, request)
            if not isinstance(body, dict):
                return body
            status, answer = await call(request, "POST", "/pre-orders", body)
            return self.json(seed_pre_order_answer(status, answer), status=status)

    @app.page("/check-atp")
    class SeedCheckAtp(ApiView):
        async def post(self, request: Request) -> Response:
            started = time.perf_counter()
            body = await json_body(self, request, "sku", "locationRef", "shipDate")
            if not isinstance(body, dict):
                return body
            sku, location = _string(body, "sku"), _string(body, "locationRef")
            ship = _string(body, "shipDate")
            quantity = body.get("quantity", 1)
            reasons = [f"{name} is required" for name, value in
                       (("sku", sku), ("locationRef", location), ("shipDate", ship)) if not value]
            if type(quantity) is not int:
                reasons.append("quantity must be a positive integer")
            for name, value in (("sku", sku), ("locationRef", location)):
                if value and not ADDRESSABLE.match(value):
                    reasons.append(f"{name} may not hold / {{ }} or |")
            if reasons or sku is None or location is None or ship is None:
                return self.json({"success": False, "error": "; ".join(reasons),
                                  "reasons": reasons}, status=400)
            status, answer = await call(
                request, "GET", f"/atp/{quote(sku, safe='')}/{quote(location, safe='')}",
                query={"shipDate": ship, "quantity": str(quantity)},
            )
            if status != 200:
                return self.json({"success": False, **answer}, status=status)
            elapsed = time.perf_counter() - started
            return self.json(seed_atp_answer(sku, location, answer, elapsed, datetime.now(UTC)))

    @app.page("/cancel-reservation")
    class SeedCancel(ApiView):
        async def post(self, request: Request) -> Response:
            body = await json_body(self, request, "reservationId", "orderId")
            if not isinstance(body, dict):
                return body
            rid, order_id = _string(body, "reservationId"), _string(body, "orderId")
            if rid is None and order_id is None:
                return self.json({"success": False, "error": "reservationId or orderId is required"},
                                 status=400)
            if rid is not None:
                rids = [rid]
            else:
                status, order = await call(request, "GET", f"/pre-orders/{quote(str(order_id), safe='')}")
                if status == 401:
                    return self.json({"success": False, **order}, status=401)
                if status != 200:
                    return self.json({"success": False, "orderId": order_id,
                                      "error": f"no pre-order {order_id}"}, status=404)
                rids = [r["reservationId"] for r in [*order.get("reservations", []),
                                                     *order.get("waitlisted", [])]
                        if r.get("status") in ACTIVE]
                if not rids:
                    return self.json({"success": False, "orderId": order_id,
                                      "error": f"order {order_id} has no active reservation"},
                                     status=409)
            cancelled: list[Json] = []
            for one in rids:
                status, answer = await call(request, "POST", f"/reservations/{quote(one, safe='')}/cancel")
                if status != 200:
                    error = answer.get("error") or answer.get("message")
                    what = f"reservation {one}" if rid is not None else f"order {order_id}"
                    return self.json({"success": False, "reservationId": one, "orderId": order_id,
                                      "error": f"{what}: {error}"}, status=status)
                cancelled.append(answer.get("reservation") or {})
            first = cancelled[0] if cancelled else {}
            return self.json({
                "success": True,
                "reservationId": rid or first.get("reservationId"),
                "orderId": order_id or first.get("orderId"),
                "reservationIds": rids,
                "message": "Reservation cancelled successfully",
            })
