"""Pre-order web endpoints, answered on any worker.

* ``POST /pre-orders``: validate (400 with every reason, 413 when too big), forward to
  the worker owning the partition of the order's first item, publish to that partition
  of ``pre-orders`` and wait up to ``pre_order_wait_seconds`` for the order's result
  (200), else 202 with a status link. The intake of that same worker decides a
  single-item order and hands the result to the waiting request in-process. Other
  results (multi-item orders, a worker that is not the owner during a rebalance) come
  from a consumer of ``pre-order-results`` (no group, every partition, from the end)
  that runs only while such requests wait: a registry of waiting requests, not state.
* ``GET /pre-orders/{orderId}``: a multi-item order's stored result, from the order
  collector's partition; a single-item order from the books' order index (this worker's,
  then every other worker's).
* ``GET /atp/…``, ``GET /reservations/{id}``, ``POST /reservations/{id}/cancel|commit``,
  ``GET /queues/…``: forwarded to the worker owning the SKU/location (a reservation id
  names its SKU/location), answered from the reservation books there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

from agents.books import supply_for
from stream_app.app import need
from stream_app.cluster import other_workers
from stream_app.credentials import LOCAL_ONLY_HEADER, redact_customers
from stream_app.domain.future_atp import atp_response
from stream_app.domain.ids import key_of_reservation_id
from stream_app.domain.preorders import (
    key_problems,
    order_conflicts,
    pre_order_result,
    quantity_problems,
    ship_date_problems,
    validate_pre_order,
    with_bump_exposure,
)
from stream_app.partitioning import partition_for
from stream_app.records import inventory_key
from stream_app.web.errors import (
    ApiView,
    BodyError,
    error_body,
    parse_count,
    read_json,
    unauthorized,
)
from stream_app.web.views import forward_to_owner

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

QUEUE_PAGE_DEFAULT = 1000
QUEUE_PAGE_MAX = 10_000


def _bad(view: View, reasons: list[str], status: int = 400, error: str = "bad_request") -> Response:
    return view.json(error_body(status, reasons, error), status=status)


def _parse_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip()[:10]) if len(text.strip()) == 10 else None
    except ValueError:
        return None


def register(runtime: Runtime) -> None:
    app, settings, names = runtime.app, runtime.settings, runtime.names
    credentials = runtime.credentials
    preorders = need(runtime.preorders, "the pre-order books")
    store, orders, policy = preorders.store, preorders.orders, preorders.policy
    waiters = need(runtime.result_waiters, "the results waiters")
    commands = runtime.topic(names.reservation_commands)
    partitions = settings.partitions

    @app.task
    async def follow_pre_order_results() -> None:
        try:
            await waiters.serve(settings.bootstrap_servers, names.pre_order_results)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the pre-order results follower stopped")

    async def forward_key(view: View, request: Request, key: str) -> Response | None:
        return await forward_to_owner(
            runtime, store.changelog_topic, store.partition_of(key), view.web, request
        )

    def shown(request: Request, body: Json) -> Json:
        """Customer data only for callers holding the service (or admin) key; every
        reservation says whether it may still be bumped (``provisional``, ``tierRank``)."""
        body = with_bump_exposure(body, policy)
        return body if credentials.is_service(request.headers) else redact_customers(body)

    in_flight = [0]  # POST /pre-orders being answered on this worker now

    @app.page("/pre-orders")
    class PreOrders(ApiView):
        async def post(self, request: Request) -> Response:
            if not credentials.is_service(request.headers):
                return unauthorized(self, "service")
            if in_flight[0] >= settings.pre_order_max_in_flight:
                # above capacity: say so at once rather than queue (the storefront retries)
                return self.json(
                    error_body(429, [f"{in_flight[0]} pre-orders are being answered on this "
                                     "worker; send it again shortly (the same orderId is never "
                                     "reserved twice)"]),
                    status=429, headers={"Retry-After": "1"},
                )
            in_flight[0] += 1
            try:
                return await self.place(request)
            finally:
                in_flight[0] -= 1

        async def place(self, request: Request) -> Response:
            # one deadline for the whole answer: publishing and waiting for the decision
            deadline = asyncio.get_running_loop().time() + settings.pre_order_wait_seconds
            try:
                raw = await read_json(request, max_bytes=settings.max_request_bytes,
                                      max_depth=settings.max_json_depth)
            except BodyError as exc:
                code = "too_large" if exc.status == 413 else "invalid_pre_order"
                return _bad(self, [exc.reason], exc.status, code)
            checked = validate_pre_order(raw, policy, datetime.now(UTC).date())
            if isinstance(checked, list):
                return _bad(self, checked, error="invalid_pre_order")
            first = checked.items[0]
            first_key = inventory_key(first.sku, first.location)
            try:
                forwarded = await forward_key(self, request, first_key)
            except ServiceUnavailable:  # rebalancing: accept it here all the same
                forwarded = None
            if forwarded is not None:
                return forwarded
            order_id = checked.order_id
            conflicts = order_conflicts(checked, store.order_reservations(order_id))
            if conflicts:
                return _bad(
                    self,
                    [f"orderId {order_id!r} was already placed with other content", *conflicts],
                    409, "conflict",
                )
            pending: Json = {
                "status": "pending",
                "orderId": order_id,
                "statusUrl": f"/pre-orders/{quote(order_id, safe='')}",
            }
            wait = settings.pre_order_wait_seconds
            future = waiters.expect(order_id)
            # the partition of the first item: the intake decides the items of that
            # SKU/location where the order arrives (no repartition hop)
            partition = partition_for(first_key, partitions)
            try:
                decided_here = len(checked.items) == 1 and store.owns(partition)
                if wait > 0 and not decided_here:
                    waiters.follow()
                    if not waiters.ready.is_set():  # results follower starting
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                waiters.ready.wait(),
                                max(0.0, deadline - asyncio.get_running_loop().time()),
                            )
                try:
                    delivered = await app.producer.send(
                        names.pre_orders,
                        order_id.encode(),
                        orjson.dumps(raw),
                        partition,
                        None,
                        None,
                    )
                    # on the broker before we answer (even 202 = accepted)
                    budget = (  # at least 50 ms: a deadline spent by the checks is not an outage
                        max(0.05, deadline - asyncio.get_running_loop().time()) if wait > 0 else None
                    )
                    await asyncio.wait_for(asyncio.shield(delivered), budget)
                except TimeoutError:
                    return self.json(
                        error_body(503, ["the broker did not confirm the pre-order within "
                                         f"{wait:g}s; send it again (the same orderId is never "
                                         "reserved twice)"], "unavailable"),
                        status=503, headers={"Retry-After": "1"},
                    )
                except Exception as exc:
                    log.warning("could not publish pre-order %s: %r", order_id, exc)
                    return self.json(
                        {"error": "unavailable", "message": "the pre-order was not accepted"},
                        status=503,
                    )
                if future.done():  # decided while the broker confirmed
                    return self.json(shown(request, future.result()))
                remaining = deadline - asyncio.get_running_loop().time()
                shed_after = settings.pre_order_shed_after_seconds
                behind = waiters.behind() if shed_after > 0 else 0.0
                if wait > 0 and remaining > 0 and 0 < shed_after < behind:
                    # above capacity: the order is on the broker and will be decided, but
                    # not within this request; holding it would only lengthen the queue
                    runtime.metrics.pre_orders_shed.inc()
                    pending["reason"] = (f"decisions run {behind:.1f}s behind on this worker "
                                         "now: ask statusUrl for the decision")
                elif wait > 0 and remaining > 0:
                    if decided_here:  # a multi-item order's wait (two hops) is no queue
                        waiters.waiting(future)
                    with contextlib.suppress(TimeoutError):
                        result = await asyncio.wait_for(asyncio.shield(future), remaining)
                        return self.json(shown(request, result))
            finally:
                waiters.forget(order_id, future)
            return self.json(pending, status=202)

    async def ask_other_workers(request: Request) -> Json | None:
        """A single-item order lives only in its book: ask every other worker's books."""
        for url in map(URL, other_workers(runtime)):
            target = request.url.with_host(url.host or "127.0.0.1").with_port(url.port)
            try:
                async with app.http_client.get(
                    target,
                    headers=credentials.forwarding_headers(request.headers, LOCAL_ONLY_HEADER),
                    timeout=aiohttp.ClientTimeout(total=settings.forward_timeout_seconds),
                ) as response:
                    if response.status == 200:
                        body: Json = await response.json()
                        return body
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # going away: next
                log.warning("order lookup on %s failed: %r", url, exc)
        return None

    @app.page("/pre-orders/{order_id}")
    class PreOrderStatus(ApiView):
        async def get(self, request: Request, order_id: str) -> Response:
            local_only = credentials.is_forwarded(request.headers, LOCAL_ONLY_HEADER)
            if not local_only:
                forwarded = await forward_to_owner(
                    runtime,
                    orders.changelog_topic,
                    orders.partition_of(order_id),
                    self.web,
                    request,
                )
                if forwarded is not None:
                    return forwarded
                entry = orders.get(order_id)  # multi-item orders: the collector's entry
                if entry is not None:
                    if "result" in entry:
                        return self.json(shown(request, entry["result"]))
                    return self.json(
                        {
                            "status": "pending",
                            "orderId": order_id,
                            "itemCount": entry.get("itemCount"),
                            "decided": len(entry.get("decisions", {})),
                        },
                        status=202,
                    )
            found = store.order_reservations(order_id)
            if found:
                return self.json(shown(request, pre_order_result(order_id, found)))
            if not local_only:
                remote = await ask_other_workers(request)
                if remote is not None:
                    return self.json(shown(request, remote))
            return self.json(
                {"error": "not_found", "message": f"no pre-order {order_id}"}, status=404
            )

    @app.page("/atp/{sku}/{location}")
    class Atp(ApiView):
        async def get(self, request: Request, sku: str, location: str) -> Response:
            ship_date = _parse_date(request.query.get("shipDate"))
            quantity = parse_count(request.query.get("quantity"), 1, 1)
            # the intake's own rules: an answer of RESERVE means POST /pre-orders takes it
            reasons = key_problems(sku, location, policy)
            if ship_date is None:
                reasons.append("shipDate is required (an ISO date YYYY-MM-DD)")
            else:
                reasons.extend(ship_date_problems(ship_date, policy, datetime.now(UTC).date()))
            reasons.extend(quantity_problems(quantity, policy))
            if reasons or ship_date is None or quantity is None:
                return _bad(self, reasons)
            key = inventory_key(sku, location)
            forwarded = await forward_key(self, request, key)
            if forwarded is not None:
                return forwarded
            part = store.books(store.partition_of(key))
            book = part.books.get(key)
            supply = supply_for(runtime, key, sku, part.categories.get(key))
            held = book.held_by_date() if book is not None else {}
            body = {"sku": sku, "location": location}
            body.update(atp_response(supply, held, ship_date, quantity, settings.waitlist_enabled))
            return self.json(body)

    @app.page("/reservations/{reservation_id}")
    class ReservationView(ApiView):
        async def get(self, request: Request, reservation_id: str) -> Response:
            key = key_of_reservation_id(reservation_id)
            if key is None:
                return self.json(
                    {"error": "not_found", "message": "not a reservation id"}, status=404
                )
            forwarded = await forward_key(self, request, key)
            if forwarded is not None:
                return forwarded
            found = store.find(reservation_id)
            if found is None:
                return self.json(
                    {"error": "not_found", "message": f"no reservation {reservation_id}"},
                    status=404,
                )
            book, reservation = found
            return self.json(shown(request, book.reservation_dict(reservation)))

    async def run_command(view: View, request: Request, reservation_id: str, name: str) -> Response:
        if not credentials.is_service(request.headers):
            return unauthorized(view, "service")
        key = key_of_reservation_id(reservation_id)
        if key is None:
            return view.json({"error": "not_found", "message": "not a reservation id"}, status=404)
        forwarded = await forward_key(view, request, key)
        if forwarded is not None:
            return forwarded
        if store.find(reservation_id) is None:
            return view.json(
                {"error": "not_found", "message": f"no reservation {reservation_id}"}, status=404
            )
        request_id = uuid.uuid4().hex
        future = store.expect_command(request_id)
        command = {"command": name, "reservationId": reservation_id, "requestId": request_id}
        try:
            await commands.send(
                key=reservation_id.encode(), value=orjson.dumps(command), force=True
            )
            response = await asyncio.wait_for(
                asyncio.shield(future), max(settings.pre_order_wait_seconds, 0.001)
            )
        except TimeoutError:
            return view.json(
                {
                    "status": "pending",
                    "command": name,
                    "reservationId": reservation_id,
                    "statusUrl": f"/reservations/{reservation_id}",
                },
                status=202,
            )
        finally:
            store.forget_command(request_id)
        error = response.get("error")
        reservations = response.get("reservations") or []
        body: Json = {
            "command": name,
            "reservationId": reservation_id,
            "ok": error is None,
            "error": error,
            "reservation": reservations[0] if reservations else None,
        }
        status = 200 if error is None else 404 if error == "not_found" else 409
        return view.json(shown(request, body), status=status)

    @app.page("/reservations/{reservation_id}/cancel")
    class CancelReservation(ApiView):
        async def post(self, request: Request, reservation_id: str) -> Response:
            return await run_command(self, request, reservation_id, "cancel")

    @app.page("/reservations/{reservation_id}/commit")
    class CommitReservation(ApiView):
        async def post(self, request: Request, reservation_id: str) -> Response:
            return await run_command(self, request, reservation_id, "commit")

    @app.page("/queues/{sku}/{location}/{ship_date}")
    class Queue(ApiView):
        async def get(self, request: Request, sku: str, location: str, ship_date: str) -> Response:
            when = _parse_date(ship_date)
            limit = parse_count(request.query.get("limit"), QUEUE_PAGE_DEFAULT, 1)
            offset = parse_count(request.query.get("offset"), 0, 0)
            reasons = key_problems(sku, location, policy)
            if when is None:
                reasons.append("shipDate must be an ISO date YYYY-MM-DD")
            if limit is None:
                reasons.append("limit must be a positive integer")
            if offset is None:
                reasons.append("offset must be an integer >= 0")
            if reasons or when is None or limit is None or offset is None:
                return _bad(self, reasons)
            key = inventory_key(sku, location)
            forwarded = await forward_key(self, request, key)
            if forwarded is not None:
                return forwarded
            book = store.existing_book(key)
            limit = min(limit, QUEUE_PAGE_MAX)
            if book is None:
                body: Json = {
                    "sku": sku,
                    "location": location,
                    "shipDate": when.isoformat(),
                    "depth": 0,
                    "entries": [],
                }
            else:
                body = book.queue_view(when, offset, limit)
            body["offset"] = offset
            body["limit"] = limit
            return self.json(shown(request, body))
