"""``GET /openapi.json``: the OpenAPI 3.1 document of every endpoint.

Written here next to the views rather than generated: Faust's views carry no types. The
schemas say what a caller may rely on (required fields and their types; answers may hold
more fields); ``tests/e2e/test_openapi.py`` runs schemathesis against a live worker with
this document and fails on any 5xx, undocumented status or answer that breaks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from stream_app.web.errors import CODES, ApiView

if TYPE_CHECKING:
    from stream_app.app import Runtime

Json = dict[str, Any]

STRING: Json = {"type": "string"}
INT: Json = {"type": "integer"}
NUMBER: Json = {"type": "number"}
BOOL: Json = {"type": "boolean"}
NULLABLE_STRING: Json = {"type": ["string", "null"]}
OBJECT: Json = {"type": "object"}
DATE: Json = {"type": "string", "format": "date"}
#: what a SKU or location may be in a path (no ``/`` or ``{}``: aiohttp's route segments
#: take none; ``|`` is the key separator)
KEY_PART: Json = {"type": "string", "minLength": 1, "maxLength": 200,
                  "pattern": "^[^/{}|]+$"}


def obj(required: dict[str, Json], optional: dict[str, Json] | None = None) -> Json:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def array(items: Json) -> Json:
    return {"type": "array", "items": items}


ERROR = obj({"error": STRING, "message": STRING}, {"reasons": array(STRING)})

RESERVATION = obj(
    {
        "reservationId": STRING, "orderId": STRING, "sku": STRING, "location": STRING,
        "shipDate": STRING, "quantity": INT, "tier": STRING, "status": STRING,
        "sequence": INT, "expiresAt": STRING,
    },
    {
        "queuePosition": {"type": ["integer", "null"]}, "customerId": STRING,
        "customerEmail": STRING, "committed": BOOL, "reason": NULLABLE_STRING,
        "tierRank": {"type": "integer", "minimum": 1,
                     "description": "1 = the highest tier"},
        "provisional": {"type": "boolean",
                        "description": "RESERVED, and a later higher-tier arrival may bump it"},
    },
)
DECISION = obj(
    {
        "orderId": STRING, "success": BOOL, "reservations": array(RESERVATION),
        "waitlisted": array(RESERVATION), "failedItems": array(OBJECT), "message": STRING,
    }
)
PENDING = obj({"status": {"const": "pending"}, "orderId": STRING},
              {"statusUrl": STRING, "reason": STRING})
PRE_ORDER_ITEM = obj(
    {"sku": KEY_PART, "quantity": {"type": "integer", "minimum": 1, "maximum": 10_000},
     "locationRef": KEY_PART},
    {"productName": {"type": "string", "maxLength": 200},
     "category": {"type": "string", "maxLength": 200}},
)
PRE_ORDER = obj(
    {
        "orderId": {"type": "string", "minLength": 1, "maxLength": 200},
        "customerId": {"type": "string", "minLength": 1, "maxLength": 200},
        "customerEmail": {"type": "string", "format": "email", "maxLength": 200},
        "customerTier": {"type": "string", "maxLength": 200},
        "shipDate": DATE,
        "items": {**array(PRE_ORDER_ITEM), "minItems": 1, "maxItems": 50},
    },
    {"source": {"type": "string", "maxLength": 200}},
)
ATP = obj(
    {
        "sku": STRING, "location": STRING, "shipDate": STRING, "quantity": INT,
        "currentInventory": INT, "expectedArrival": INT, "totalExpected": INT,
        "existingReservations": INT, "overbookingLimit": INT, "availableToPromise": INT,
        "canFulfill": BOOL,
        "recommendation": {"enum": ["RESERVE", "WAITLIST", "REJECT"]},
    }
)
QUEUE = obj(
    {"sku": STRING, "location": STRING, "shipDate": STRING, "depth": INT,
     "entries": array(RESERVATION), "offset": INT, "limit": INT}
)
COMMAND = obj(
    {"command": STRING, "reservationId": STRING},
    {"ok": BOOL, "error": NULLABLE_STRING, "reservation": {"type": ["object", "null"]},
     "status": STRING},
)
HEALTH = obj({"live": BOOL, "ready": BOOL, "appId": STRING, "partitions": array(INT)},
             {"stalled": OBJECT, "reason": STRING})
INVENTORY = obj(
    {"sku": STRING, "location": STRING, "channels": OBJECT, "totalOnHand": INT,
     "totalReserved": INT, "buffer": INT, "atp": INT, "expectedArrivals": array(OBJECT)}
)
SYNC = obj({"dirty": INT, "runs": array(OBJECT), "errors": array(OBJECT), "jobs": OBJECT,
            "workers": array(OBJECT)})
ACCEPTED = obj({}, {"status": STRING, "runId": STRING})
RELEASE_PLAN = obj({"byTier": OBJECT, "totals": OBJECT, "keys": INT})
RELEASE_RUN = obj({"runId": STRING}, {"state": STRING, "releaseDate": STRING})
SEED_CANCEL = obj({"success": BOOL}, {"reservationId": NULLABLE_STRING,
                                      "orderId": NULLABLE_STRING, "message": STRING,
                                      "error": STRING})
SEED_ANSWER = obj({"success": BOOL}, {"error": STRING, "orderId": STRING})
SEED_ATP = obj(
    {"sku": STRING, "locationRef": STRING, "shipDate": STRING, "requestedQuantity": INT,
     "currentInventory": INT, "expectedArrival": INT, "totalExpected": INT,
     "existingReservations": INT, "overbookingLimit": INT, "availableToPromise": INT,
     "canFulfill": BOOL, "duration": NUMBER, "recommendation": STRING, "timestamp": STRING}
)


def path_param(name: str, schema: Json = KEY_PART) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query(name: str, schema: Json, required: bool = False) -> Json:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def answer(schema: Json, description: str = "", content_type: str = "application/json") -> Json:
    return {"description": description or "the answer",
            "content": {content_type: {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Json]:
    """The error answers an endpoint may give (every one of them JSON, :data:`ERROR`)."""
    return {str(s): answer(ERROR, CODES.get(s, "error")) for s in statuses}


def op(summary: str, responses: dict[str, Json], *, params: list[Json] | None = None,
       body: Json | None = None, secured: str | None = None) -> Json:
    """One operation; every one may answer 503 (rebalancing, owner unreachable) and 500."""
    out: Json = {"summary": summary, "parameters": params or [],
                 "responses": {**responses, **errors(500, 503)}}
    if any(p["in"] == "path" for p in params or []):  # a value no route can hold: 404
        out["responses"].setdefault("404", answer(ERROR, "not_found"))
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if secured:
        out["security"] = [{secured: []}]
        out["responses"].update(errors(401))
    return out


KEY_PARAMS = [path_param("sku"), path_param("location")]
ADMIN = "adminKey"
SERVICE = "serviceKey"


def document(version: str) -> Json:
    date_window = {"type": "string", "format": "date"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "stream-app", "version": version,
                 "description": "Inventory ATP, Fluent delta sync and pre-order campaigns. "
                 "Every endpoint answers on any worker (a key's request is forwarded to "
                 "its owner). Every error is JSON with a machine-readable `error` code."},
        "components": {"securitySchemes": {
            SERVICE: {"type": "apiKey", "in": "header", "name": "X-API-Key",
                      "description": "the service key (STREAM_APP_SERVICE_API_KEY)"},
            ADMIN: {"type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "the admin key (STREAM_APP_ADMIN_API_KEY)"},
        }},
        "paths": {
            "/health": {"get": op("liveness and readiness", {
                "200": answer(HEALTH), "503": answer(HEALTH, "not ready")})},
            "/metrics": {"get": op("Prometheus metrics", {
                "200": answer(STRING, "text exposition", "text/plain")})},
            "/": {"get": op("the operations console", {
                "200": answer(STRING, "HTML", "text/html")})},
            "/openapi.json": {"get": op("this document", {"200": answer(OBJECT)})},
            "/inventory/{sku}/{location}": {"get": op(
                "channels, totals, buffer and ATP of one SKU/location",
                {"200": answer(INVENTORY), **errors(404)}, params=KEY_PARAMS)},
            "/atp/{sku}/{location}": {"get": op(
                "future ATP for a ship date, by the intake's rules",
                {"200": answer(ATP), **errors(400)},
                params=[*KEY_PARAMS, query("shipDate", DATE, True),
                        query("quantity", {"type": "integer", "minimum": 1, "maximum": 10_000})])},
            "/pre-orders": {"post": op(
                "place a pre-order: the decision (200) or pending (202)",
                {"200": answer(DECISION), "202": answer(PENDING), **errors(400, 409, 413, 429)},
                body=PRE_ORDER, secured=SERVICE)},
            "/pre-orders/{orderId}": {"get": op(
                "an order's result (customer data with the service key)",
                {"200": answer(DECISION), "202": answer(OBJECT), **errors(404)},
                params=[path_param("orderId", {"type": "string", "minLength": 1,
                                               "maxLength": 200, "pattern": "^[^/{}]+$"})])},
            "/reservations/{reservationId}": {"get": op(
                "one reservation (customer data with the service key)",
                {"200": answer(RESERVATION), **errors(404)},
                params=[path_param("reservationId", {"type": "string", "pattern": "^[^/{}]+$"})])},
            "/reservations/{reservationId}/cancel": {"post": op(
                "cancel a reservation", {"200": answer(COMMAND), "202": answer(COMMAND),
                                         **errors(404, 409)},
                params=[path_param("reservationId", {"type": "string", "pattern": "^[^/{}]+$"})],
                secured=SERVICE)},
            "/reservations/{reservationId}/commit": {"post": op(
                "commit a reservation (payment captured)",
                {"200": answer(COMMAND), "202": answer(COMMAND), **errors(404, 409)},
                params=[path_param("reservationId", {"type": "string", "pattern": "^[^/{}]+$"})],
                secured=SERVICE)},
            "/queues/{sku}/{location}/{shipDate}": {"get": op(
                "a queue in rank order with positions, paged",
                {"200": answer(QUEUE), **errors(400)},
                params=[*KEY_PARAMS, path_param("shipDate", DATE),
                        query("limit", {"type": "integer", "minimum": 1,
                                        "description": "at most 10000 are returned"}),
                        query("offset", {"type": "integer", "minimum": 0,
                                         "maximum": 999_999_999_999})])},
            "/sync": {"get": op("Fluent sync: dirty count, runs, jobs, errors of every worker",
                                {"200": answer(SYNC)})},
            "/sync/flush": {"post": op("flush now (full=true: full resync)",
                                       {"202": answer(ACCEPTED)},
                                       params=[query("full", {"type": "boolean"})],
                                       secured=ADMIN)},
            "/sync/reconciliation": {"get": op("Fluent reconciliation runs",
                                               {"200": answer(OBJECT)})},
            "/sync/reconcile": {"post": op("start a reconciliation now",
                                           {"202": answer(ACCEPTED)}, secured=ADMIN)},
            "/channels": {"get": op("channel connectors and their progress",
                                    {"200": answer(obj({"channels": array(OBJECT)}))})},
            "/admin/release": {"post": op(
                "release a date (within the release window) on every partition; "
                "dryRun=true: the plan only",
                {"200": answer(obj({"dryRun": BOOL, "plan": RELEASE_PLAN})),
                 "202": answer(RELEASE_RUN), **errors(400)},
                params=[query("date", date_window, True), query("dryRun", {"type": "boolean"})],
                secured=ADMIN)},
            "/admin/release-plan": {"get": op(
                "this worker's release preview (what dryRun gathers)",
                {"200": answer(obj({"byTier": OBJECT, "keys": INT})), **errors(400)},
                params=[query("date", DATE, True)], secured=ADMIN)},
            "/admin/expire": {"post": op("the expiry check now", {"202": answer(ACCEPTED)},
                                         secured=ADMIN)},
            "/admin/export": {"post": op("the S3 export now", {"200": answer(OBJECT),
                                                               **errors(502)}, secured=ADMIN)},
            "/admin/release-state": {"get": op("this worker's reservations and run reports",
                                               {"200": answer(OBJECT)}, secured=ADMIN)},
            "/releases": {"get": op("release runs", {"200": answer(obj({"runs": array(OBJECT)})),
                                                     **errors(400)},
                                    params=[query("limit", {"type": "integer", "minimum": 1,
                                                            "description": "at most 500"})])},
            "/releases/{runId}": {"get": op("one release run", {
                "200": answer(RELEASE_RUN), **errors(404)},
                params=[path_param("runId", {"type": "string", "pattern": "^[^/{}]+$"})])},
            "/console/status": {"get": op(
                "every worker's partitions, consumer lag, dead letters and decisions",
                {"200": answer(obj({"workers": array(OBJECT), "lag": OBJECT,
                                    "deadLetters": OBJECT, "decisions": OBJECT}))})},
            "/campaigns/{sku}/{location}": {"get": op(
                "a SKU/location's campaign per ship date: limit, held, ATP, by tier and status",
                {"200": answer(obj({"sku": STRING, "location": STRING,
                                    "currentInventory": INT, "shipDates": array(OBJECT)})),
                 **errors(400)},
                params=KEY_PARAMS)},
            "/pre-order": {"post": op("seed alias of POST /pre-orders", {
                "200": answer(DECISION), "202": answer(SEED_ANSWER),
                "400": answer(SEED_ANSWER), "409": answer(ERROR), "413": answer(ERROR),
                "429": answer(ERROR)},
                body=PRE_ORDER, secured=SERVICE)},
            "/check-atp": {"post": op("seed alias of GET /atp", {
                "200": answer(SEED_ATP), "400": answer(SEED_ANSWER)},
                body=obj({"sku": KEY_PART, "locationRef": KEY_PART, "shipDate": DATE},
                         {"quantity": {"type": "integer", "minimum": 1, "maximum": 10_000}}),
                secured=SERVICE)},
            "/cancel-reservation": {"post": op("seed alias of the cancel endpoint", {
                "200": answer(SEED_CANCEL), "400": answer(SEED_CANCEL),
                "404": answer(SEED_CANCEL), "409": answer(SEED_CANCEL)},
                body=obj({}, {"reservationId": STRING, "orderId": STRING}),
                secured=SERVICE)},
        },
    }


def register(runtime: Runtime) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("stream-app")
    except PackageNotFoundError:
        own = "0"
    body = document(own)

    @runtime.app.page("/openapi.json")
    class OpenApi(ApiView):
        async def get(self, request: Request) -> Response:
            return self.json(body)
