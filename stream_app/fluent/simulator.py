"""A local Fluent Commerce simulator: a real aiohttp server with the Fluent endpoints we use.

Owns an in-memory Fluent (tokens, jobs, batches, inventory, orders) behind the same URLs,
payloads and error bodies as Fluent (see the Fluent fact sheet), plus ``/_sim/`` endpoints
to inspect that state and inject faults. Where Fluent's behaviour is undocumented the
choice made here is noted beside the code.

Deterministic by design: time comes from an injected clock (epoch seconds), batches
advance PENDING -> RUNNING -> COMPLETE on status polls (``SimulatorConfig.batch_polls``),
and faults are counted or bounded by the same clock.

GraphQL is not parsed: the operation is recognised by name (``inventoryPositions`` or
``createOrder``) in the query text and **all arguments must be passed as ``variables``**.
A mutation may hold several aliased ``createOrder(input: $var)`` fields (run in order, each
failure reported with its ``path``), as a GraphQL server runs them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import MultiDict

log = logging.getLogger(__name__)

API_PREFIX = "/api/v4.1"
MAX_BATCH_ENTITIES = 5000
MAX_GRAPHQL_BYTES = 2 * 1024 * 1024
DEFAULT_USERNAME = "sim-user"
DEFAULT_PASSWORD = "sim-password"  # noqa: S105 - the simulator's public demo credential
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"  # noqa: S105 - the simulator's public demo credential
DEFAULT_RETAILER_ID = "1"

UNAUTHORIZED_MESSAGE = "Invalid user, Authorization header value does not belong to a valid user"
RECORD_ERROR_MESSAGES = {
    "301": "Unauthorised",
    "400": "Bad request",
    "404": "Dependent record not found",
    "500": "Internal error",
}
_REQUIRED_ENTITY_FIELDS = ("retailerId", "skuRef", "locationRef", "qty")

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimClock:
    """An epoch-seconds wall clock that follows real time shifted by an adjustable offset.

    ``set`` jumps to a moment (time keeps flowing from there), ``advance`` moves forward.
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("SimClock.set needs a timezone-aware datetime")
        self.offset = when.timestamp() - time.time()

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def iso(ts: float) -> str:
    """Fluent-style UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{int(ts * 1000) % 1000:03d}Z"
    )


def _utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


class ApiError(Exception):
    """A Fluent REST error: rendered as ``{"errors": [{"code", "message"}]}``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or str(status)

    def response(self) -> web.Response:
        return _json({"errors": [{"code": self.code, "message": self.message}]}, self.status)


@dataclass
class SimulatorConfig:
    """Behaviour switches; mutable so a test can change them on a running simulator."""

    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    retailer_id: str = DEFAULT_RETAILER_ID
    token_ttl: float = 3600.0
    refresh_enabled: bool = True
    refresh_token_ttl: float = 7 * 86400.0
    batch_polls: int = 2
    """Status GETs until a batch is COMPLETE: 2 = RUNNING on the 1st, COMPLETE on the 2nd;
    0 = complete (and applied) at creation."""


@dataclass
class Job:
    id: str
    name: str
    retailer_id: str
    meta: dict[str, Any] | None
    created_at: float
    batch_ids: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def preprocessing(self) -> bool:
        # BPP is skipped only with meta.preprocessing == "skip" (fact sheet, BPP section).
        return not (self.meta and self.meta.get("preprocessing") == "skip")


@dataclass
class Batch:
    id: str
    job_id: str
    action: str
    entity_type: str
    entities: list[dict[str, Any]]
    created_at: float
    source: str | None = None
    status: str = "PENDING"
    polls: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    completed_at: float | None = None


@dataclass
class InventoryRow:
    retailer_id: str
    sku_ref: str
    location_ref: str
    qty: int
    corrected_qty: int
    entity_id: str
    created_at: float
    updated_at: float
    batch_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "retailerId": self.retailer_id,
            "skuRef": self.sku_ref,
            "locationRef": self.location_ref,
            "qty": self.qty,
            "correctedQty": self.corrected_qty,
            "updatedOn": iso(self.updated_at),
            "batchId": self.batch_id,
        }


@dataclass
class Fault:
    """An injected failure for matching calls: a status, a latency, or both."""

    status: int | None = None
    latency: float | None = None
    retry_after: float | None = None
    path: str | None = None
    method: str | None = None
    remaining: int | None = 1
    until: float | None = None
    message: str | None = None

    def active(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until

    def matches(self, method: str, path: str, now: float) -> bool:
        if not self.active(now):
            return False
        if self.path is not None and not path.startswith(self.path):
            return False
        return self.method is None or self.method.upper() == method.upper()

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency": self.latency,
            "retryAfter": self.retry_after,
            "path": self.path,
            "method": self.method,
            "remaining": self.remaining,
            "until": iso(self.until) if self.until is not None else None,
        }


class SimulatorState:
    """Everything the simulator holds. Plain in-memory state, mutated only on the event loop."""

    def __init__(self, clock: Clock = time.time, config: SimulatorConfig | None = None) -> None:
        self.clock: Clock = clock
        self.config = config or SimulatorConfig()
        self.access_tokens: dict[str, float] = {}
        self.refresh_tokens: dict[str, float] = {}
        # Ids are never reused, not even after reset: a client may still hold an old one.
        self._next_id: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """Forget data, faults and counters. Issued tokens stay valid (clients keep working)."""
        self.jobs: dict[str, Job] = {}
        self.batches: dict[str, Batch] = {}
        self.inventory: dict[tuple[str, str, str], InventoryRow] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.record_errors: dict[str, dict[str, str]] = {}
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.grants: Counter[str] = Counter()

    def next_id(self, kind: str) -> str:
        self._next_id[kind] += 1
        return str(self._next_id[kind])

    # --- tokens ----------------------------------------------------------------------
    def issue_token(self) -> dict[str, Any]:
        now = self.clock()
        cfg = self.config
        for tokens in (self.access_tokens, self.refresh_tokens):
            for stale in [t for t, expires in tokens.items() if expires <= now]:
                del tokens[stale]
        access = str(uuid.uuid4())
        self.access_tokens[access] = now + cfg.token_ttl
        rid = cfg.retailer_id
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": int(cfg.token_ttl),
            "scope": "api",
            "Retailer_id": int(rid) if rid.isdigit() else rid,
            "FirstName": "Simulator",
            "LastName": "User",
        }
        if cfg.refresh_enabled:
            refresh = str(uuid.uuid4())
            self.refresh_tokens[refresh] = now + cfg.refresh_token_ttl
            body["refresh_token"] = refresh
        return body

    def use_refresh_token(self, token: str) -> bool:
        """Consume a refresh token (single use); False when unknown, used or expired."""
        expires = self.refresh_tokens.pop(token, None)
        return expires is not None and self.clock() < expires and self.config.refresh_enabled

    def token_valid(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        expires = self.access_tokens.get(token.strip())
        return expires is not None and self.clock() < expires

    def expire_tokens(self, *, refresh: bool = False) -> None:
        now = self.clock()
        for token in self.access_tokens:
            self.access_tokens[token] = now
        if refresh:
            for token in self.refresh_tokens:
                self.refresh_tokens[token] = now

    # --- jobs and batches --------------------------------------------------------------
    def job_status(self, job: Job) -> str:
        # Fluent closes jobs at midnight UTC after their creation.
        if job.closed or _utc_day(self.clock()) > _utc_day(job.created_at):
            return "CLOSED"
        return "OPEN"

    def create_job(self, body: Mapping[str, Any]) -> Job:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "'name' is required")
        retailer = body.get("retailerId")
        if retailer is None or (isinstance(retailer, str) and not retailer.strip()):
            raise ApiError(400, "'retailerId' is required", code="NotNull")
        meta = body.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ApiError(400, "'meta' must be an object")
        job = Job(self.next_id("job"), name, str(retailer), meta, self.clock())
        self.jobs[job.id] = job
        return job

    def job_summary(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": job.id,
            "id": job.id,
            "name": job.name,
            "status": self.job_status(job),
            "retailerId": job.retailer_id,
            "createdOn": iso(job.created_at),
            "meta": job.meta,
        }

    def job_detail(self, job: Job) -> dict[str, Any]:
        out = self.job_summary(job)
        out["batch"] = [
            {
                "batchId": b.id,
                "status": b.status,
                "entityType": b.entity_type,
                "createdOn": iso(b.created_at),
            }
            for b in (self.batches[i] for i in job.batch_ids)
        ]
        return out

    def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"Job {job_id} not found")
        return job

    def create_batch(self, job: Job, body: Mapping[str, Any]) -> Batch:
        if self.job_status(job) == "CLOSED":
            raise ApiError(400, f"Job {job.id} is CLOSED; batches need an OPEN job")
        action = body.get("action")
        entity_type = body.get("entityType")
        if action != "UPSERT":
            raise ApiError(400, f"'action' must be UPSERT for INVENTORY, got {action!r}")
        if entity_type != "INVENTORY":
            raise ApiError(400, f"'entityType' must be INVENTORY, got {entity_type!r}")
        entities = body.get("entities")
        if not isinstance(entities, list) or not entities:
            raise ApiError(400, "'entities' is required and must not be empty")
        if len(entities) > MAX_BATCH_ENTITIES:
            raise ApiError(
                400,
                f"Batch has {len(entities)} entities; the maximum is {MAX_BATCH_ENTITIES}",
            )
        problems: list[str] = []
        for index, entity in enumerate(entities):
            if not isinstance(entity, dict):
                problems.append(f"entities[{index}] must be an object")
                continue
            missing = [f"'{k}'" for k in _REQUIRED_ENTITY_FIELDS if entity.get(k) in (None, "")]
            if missing:
                problems.append(f"entities[{index}]: {', '.join(missing)} is required")
            for key in ("qty", "correctedQty"):
                value = entity.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    problems.append(f"entities[{index}]: '{key}' must be an integer")
            if len(problems) >= 20:
                break
        if problems:
            raise ApiError(400, "; ".join(problems))
        source = body.get("source")
        batch = Batch(
            id=self.next_id("batch"),
            job_id=job.id,
            action=action,
            entity_type=entity_type,
            entities=[dict(e) for e in entities],
            created_at=self.clock(),
            source=source if isinstance(source, str) else None,
        )
        self.batches[batch.id] = batch
        job.batch_ids.append(batch.id)
        if self.config.batch_polls <= 0:
            self.complete_batch(batch)
        return batch

    def poll_batch(self, batch: Batch) -> None:
        """A status GET: moves the batch one step along PENDING -> RUNNING -> COMPLETE."""
        if batch.status == "COMPLETE":
            return
        batch.polls += 1
        if batch.polls >= self.config.batch_polls:
            self.complete_batch(batch)
        else:
            batch.status = "RUNNING"

    def process_pending(self) -> int:
        """Complete every unfinished batch now; returns how many."""
        pending = [b for b in self.batches.values() if b.status != "COMPLETE"]
        for batch in pending:
            self.complete_batch(batch)
        return len(pending)

    def _record_error(self, sku: str, location: str) -> dict[str, str] | None:
        return self.record_errors.get(f"{sku}:{location}") or self.record_errors.get(sku)

    def complete_batch(self, batch: Batch) -> None:
        now = self.clock()
        preprocessing = self.jobs[batch.job_id].preprocessing
        results: list[dict[str, Any]] = []
        for entity in batch.entities:
            retailer = str(entity["retailerId"])
            sku = str(entity["skuRef"])
            location = str(entity["locationRef"])
            ref = f"{sku}:{location}"
            error = self._record_error(sku, location)
            if error is not None:
                results.append(
                    {"entityRef": ref, "responseCode": error["code"], "message": error["message"]}
                )
                continue
            qty = int(entity["qty"])
            corrected = int(entity.get("correctedQty") or 0)
            key = (retailer, sku, location)
            row = self.inventory.get(key)
            if row is None:
                row = InventoryRow(
                    retailer,
                    sku,
                    location,
                    qty,
                    corrected,
                    self.next_id("entity"),
                    now,
                    now,
                    batch.id,
                )
                self.inventory[key] = row
            elif preprocessing and row.qty == qty and row.corrected_qty == corrected:
                # BPP drops unchanged records: nothing is written.
                pass
            else:
                row.qty, row.corrected_qty = qty, corrected
                row.updated_at, row.batch_id = now, batch.id
            results.append(
                {
                    "entityId": row.entity_id,
                    "entityRef": ref,
                    "responseCode": "200",
                    "message": "OK",
                }
            )
        batch.results = results
        batch.status = "COMPLETE"
        batch.completed_at = now

    def batch_view(self, batch: Batch) -> dict[str, Any]:
        complete = batch.status == "COMPLETE"
        return {
            "id": batch.id,
            "batchId": batch.id,
            "jobId": batch.job_id,
            "action": batch.action,
            "entityType": batch.entity_type,
            "status": batch.status,
            "start": 1,
            "count": len(batch.results) if complete else 0,
            "total": len(batch.entities),
            "results": batch.results if complete else [],
            "createdOn": iso(batch.created_at),
        }

    # --- GraphQL ----------------------------------------------------------------------
    def inventory_positions(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        first = variables.get("first", 100)
        if first is None:
            first = 100
        if isinstance(first, bool) or not isinstance(first, int) or not 0 < first <= 5000:
            raise GraphQLError("'first' must be an integer between 1 and 5000")
        after = variables.get("after")
        start_key: tuple[str, str, str] | None = _decode_cursor(after) if after else None
        products = _as_set(variables.get("productRef"))
        locations = _as_set(variables.get("locationRef"))
        retailer: str | None = None
        catalogue = variables.get("catalogue")
        if isinstance(catalogue, dict) and isinstance(catalogue.get("ref"), str):
            retailer = catalogue["ref"].rpartition(":")[2]
        rows = [
            row
            for key, row in sorted(self.inventory.items())
            if (start_key is None or key > start_key)
            and (products is None or row.sku_ref in products)
            and (locations is None or row.location_ref in locations)
            and (retailer is None or row.retailer_id == retailer)
        ]
        page = rows[:first]
        edges = [{"cursor": _encode_cursor(r), "node": _position_node(r)} for r in page]
        return {
            "edges": edges,
            "pageInfo": {
                "hasNextPage": len(rows) > first,
                "hasPreviousPage": start_key is not None,
                "endCursor": edges[-1]["cursor"] if edges else None,
            },
        }

    def create_order(self, order_input: Any) -> dict[str, Any]:
        if not isinstance(order_input, dict):
            raise GraphQLError("Variable 'input' of type CreateOrderInput is required")
        missing = [
            k for k in ("ref", "type", "retailer", "customer", "items") if not order_input.get(k)
        ]
        if missing:
            raise GraphQLError(f"CreateOrderInput: {', '.join(missing)} is required")
        items = order_input["items"]
        if not isinstance(items, list):
            raise GraphQLError("CreateOrderInput: items must be a list")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise GraphQLError(f"items[{index}] must be an object")
            gone = [k for k in ("ref", "productRef", "quantity") if item.get(k) in (None, "")]
            if gone:
                raise GraphQLError(f"items[{index}]: {', '.join(gone)} is required")
        ref = str(order_input["ref"])
        if ref in self.orders:
            raise GraphQLError(f"Order with ref '{ref}' already exists", code="C0130E")
        order = {
            "id": self.next_id("order"),
            "ref": ref,
            "type": order_input["type"],
            "status": "CREATED",
            "workflowRef": "ORDER::" + str(order_input["type"]),
            "workflowVersion": "1.0",
            "createdOn": iso(self.clock()),
            "retailer": order_input["retailer"],
            "customer": order_input["customer"],
            "items": items,
            "input": order_input,
        }
        self.orders[ref] = order
        return {
            k: order[k]
            for k in ("id", "ref", "type", "status", "workflowRef", "workflowVersion", "createdOn")
        }

    # --- faults and calls ----------------------------------------------------------------
    def add_fault(self, spec: Mapping[str, Any]) -> None:
        """Apply one ``POST /_sim/faults`` object (see module docs of :func:`create_simulator_app`)."""
        known = {
            "status",
            "count",
            "seconds",
            "path",
            "method",
            "retryAfter",
            "latency",
            "expireTokens",
            "expireRefreshTokens",
            "recordErrors",
            "message",
        }
        unknown = set(spec) - known
        if unknown:
            raise ApiError(400, f"unknown fault keys: {', '.join(sorted(unknown))}")
        if spec.get("expireTokens") or spec.get("expireRefreshTokens"):
            self.expire_tokens(refresh=bool(spec.get("expireRefreshTokens")))
        record_errors = spec.get("recordErrors")
        if record_errors is not None:
            if not isinstance(record_errors, dict):
                raise ApiError(400, "recordErrors must map SKU (or SKU:LOC) to a code")
            for ref, value in record_errors.items():
                if isinstance(value, dict):
                    code = str(value.get("code", "500"))
                    message = str(value.get("message") or RECORD_ERROR_MESSAGES.get(code, "Error"))
                else:
                    code = str(value)
                    message = RECORD_ERROR_MESSAGES.get(code, "Error")
                self.record_errors[str(ref)] = {"code": code, "message": message}
        status, latency = spec.get("status"), spec.get("latency")
        if status is None and latency is None:
            return
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ApiError(400, "status must be an HTTP status code")
        if latency is not None and (not isinstance(latency, int | float) or latency < 0):
            raise ApiError(400, "latency must be seconds >= 0")
        seconds, count = spec.get("seconds"), spec.get("count")
        retry_after = spec.get("retryAfter")
        if retry_after is None and status == 429:
            retry_after = 1
        self.faults.append(
            Fault(
                status=status,
                latency=float(latency) if latency is not None else None,
                retry_after=float(retry_after) if retry_after is not None else None,
                path=spec.get("path"),
                method=spec.get("method"),
                remaining=int(count) if count is not None else (None if seconds else 1),
                until=self.clock() + float(seconds) if seconds else None,
                message=spec.get("message"),
            )
        )

    def clear_faults(self) -> None:
        self.faults.clear()
        self.record_errors.clear()

    def take_faults(self, method: str, path: str) -> tuple[float, Fault | None]:
        """The latency and the status fault (if any) that apply to this call; consumes them."""
        now = self.clock()
        latency, status_fault = 0.0, None
        latency_taken = False
        for fault in self.faults:
            if not fault.matches(method, path, now):
                continue
            used = False
            if fault.latency is not None and not latency_taken:
                latency, latency_taken, used = fault.latency, True, True
            if fault.status is not None and status_fault is None:
                status_fault, used = fault, True
            if used:
                fault.consume()
        self.faults = [f for f in self.faults if f.active(now)]
        return latency, status_fault

    def record_call(self, path: str, status: int) -> None:
        self.calls[path][str(status)] += 1

    def call_count(self, path_prefix: str = "", status: int | None = None) -> int:
        """Calls whose path starts with ``path_prefix`` (optionally only one status)."""
        return sum(
            n
            for path, by_status in self.calls.items()
            if path.startswith(path_prefix)
            for code, n in by_status.items()
            if status is None or code == str(status)
        )

    # --- inspection --------------------------------------------------------------------
    def inventory_snapshot(self) -> list[dict[str, Any]]:
        return [row.as_dict() for _, row in sorted(self.inventory.items())]

    def batches_snapshot(self) -> list[dict[str, Any]]:
        out = []
        for batch in self.batches.values():
            job = self.jobs[batch.job_id]
            out.append(
                {
                    "id": batch.id,
                    "jobId": batch.job_id,
                    "status": batch.status,
                    "entityCount": len(batch.entities),
                    "failedCount": sum(1 for r in batch.results if r["responseCode"] != "200"),
                    "preprocessing": job.preprocessing,
                    "action": batch.action,
                    "entityType": batch.entity_type,
                    "source": batch.source,
                    "createdOn": iso(batch.created_at),
                }
            )
        return out

    def jobs_snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                **self.job_summary(job),
                "batchCount": len(job.batch_ids),
                "preprocessing": job.preprocessing,
            }
            for job in self.jobs.values()
        ]

    def orders_snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "id": o["id"],
                "ref": o["ref"],
                "type": o["type"],
                "status": o["status"],
                "items": o["items"],
                "createdOn": o["createdOn"],
            }
            for o in self.orders.values()
        ]


class GraphQLError(Exception):
    """A GraphQL error: HTTP 200 with ``errors[]``."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.code:
            out["extensions"] = {"code": self.code}
        return out


def _as_set(value: Any) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return {str(v) for v in value}


def _encode_cursor(row: InventoryRow) -> str:
    raw = orjson.dumps([row.retailer_id, row.sku_ref, row.location_ref])
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_cursor(cursor: Any) -> tuple[str, str, str]:
    try:
        retailer, sku, location = orjson.loads(base64.urlsafe_b64decode(str(cursor)))
        return str(retailer), str(sku), str(location)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise GraphQLError("Invalid cursor for 'after'") from None


def _position_node(row: InventoryRow) -> dict[str, Any]:
    return {
        "id": row.entity_id,
        "ref": f"{row.sku_ref}:{row.location_ref}:DEFAULT",
        "type": "DEFAULT",
        "status": "ACTIVE",
        "productRef": row.sku_ref,
        "locationRef": row.location_ref,
        # LAST_ON_HAND is the only quantity the simulator holds, so onHand equals it.
        "onHand": row.qty,
        "catalogue": {"ref": f"DEFAULT:{row.retailer_id}"},
        "createdOn": iso(row.created_at),
        "updatedOn": iso(row.updated_at),
        "quantities": {
            "edges": [
                {
                    "node": {
                        "ref": f"{row.sku_ref}:{row.location_ref}:LAST_ON_HAND",
                        "type": "LAST_ON_HAND",
                        "status": "ACTIVE",
                        "quantity": row.qty,
                    }
                }
            ]
        },
    }


# --- HTTP layer ------------------------------------------------------------------------

STATE_KEY = web.AppKey("fluent_sim_state", SimulatorState)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise ApiError(400, "Malformed JSON request body") from None


def _fault_response(fault: Fault) -> web.Response:
    status = fault.status or 500
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        value = fault.retry_after
        headers["Retry-After"] = str(int(value)) if value == int(value) else str(value)
    if status == 401:
        return _json({"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]}, 401, headers)
    message = fault.message or {429: "Too many requests", 503: "Service unavailable"}.get(
        status, "Injected failure"
    )
    return _json({"errors": [{"code": str(status), "message": message}]}, status, headers)


@web.middleware
async def _fluent_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults, bearer-token check and call counting for every Fluent (non-``/_sim/``) call."""
    path = request.path
    if path.startswith("/_sim/"):
        return await handler(request)
    state = _state(request)
    status = 500
    try:
        latency, fault = state.take_faults(request.method, path)
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is not None:
            response: web.StreamResponse = _fault_response(fault)
        elif path != "/oauth/token" and not state.token_valid(request.headers.get("Authorization")):
            response = _json({"errors": [{"code": "401", "message": UNAUTHORIZED_MESSAGE}]}, 401)
        else:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = exc.response()
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.record_call(path, status)


async def _oauth_token(request: web.Request) -> web.Response:
    state = _state(request)
    cfg = state.config
    params: MultiDict[str] = MultiDict(request.query)
    if request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, str):
                params[key] = value
    grant = params.get("grant_type")
    bad_credentials = _json({"error": "invalid_grant", "error_description": "Bad credentials"}, 400)
    if params.get("client_id") != cfg.client_id or params.get("client_secret") != cfg.client_secret:
        return bad_credentials
    if grant == "password":
        if params.get("username") != cfg.username or params.get("password") != cfg.password:
            return bad_credentials
        if params.get("scope") not in (None, "", "api"):
            return _json({"error": "invalid_scope", "error_description": "Invalid scope"}, 400)
        state.grants["password"] += 1
        return _json(state.issue_token())
    if grant == "refresh_token":
        if not state.use_refresh_token(params.get("refresh_token") or ""):
            return _json(
                {"error": "invalid_grant", "error_description": "Invalid refresh token"}, 400
            )
        state.grants["refresh_token"] += 1
        return _json(state.issue_token())
    return _json(
        {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}, 400
    )


async def _create_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "'name' is required")
    job = _state(request).create_job(body)
    return _json({"id": job.id})


async def _list_jobs(request: web.Request) -> web.Response:
    state = _state(request)
    query = request.query
    jobs = [state.job_summary(j) for j in state.jobs.values()]
    if status := query.get("status"):
        jobs = [j for j in jobs if j["status"] == status.upper()]
    for key in ("name", "retailerId"):
        if wanted := query.get(key):
            jobs = [j for j in jobs if j[key] == wanted]
    try:
        start = max(int(query.get("start", "1")), 1)
        count = max(int(query.get("count", "100")), 1)
    except ValueError:
        raise ApiError(400, "'start' and 'count' must be integers") from None
    page = jobs[start - 1 : start - 1 + count]
    return _json({"start": start, "count": len(page), "total": len(jobs), "results": page})


async def _get_job(request: web.Request) -> web.Response:
    state = _state(request)
    return _json(state.job_detail(state.get_job(request.match_info["job_id"])))


async def _create_batch(request: web.Request) -> web.Response:
    state = _state(request)
    job = state.get_job(request.match_info["job_id"])
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a batch object")
    batch = state.create_batch(job, body)
    return _json({"id": batch.id})


async def _get_batch(request: web.Request) -> web.Response:
    state = _state(request)
    job = state.get_job(request.match_info["job_id"])
    batch = state.batches.get(request.match_info["batch_id"])
    if batch is None or batch.job_id != job.id:
        raise ApiError(404, f"Batch {request.match_info['batch_id']} not found in job {job.id}")
    state.poll_batch(batch)
    return _json(state.batch_view(batch))


async def _graphql(request: web.Request) -> web.Response:
    too_large = _json({"errors": [{"message": "Request body exceeds 2 MB"}]}, 413)
    if (request.content_length or 0) > MAX_GRAPHQL_BYTES:
        return too_large
    raw = await request.read()
    if len(raw) > MAX_GRAPHQL_BYTES:
        return too_large
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json({"errors": [{"message": "Malformed JSON request body"}]}, 400)
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _json({"errors": [{"message": "'query' is required"}]}, 400)
    query: str = body["query"]
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        return _json({"errors": [{"message": "'variables' must be an object"}]}, 400)
    state = _state(request)
    try:
        if re.search(r"\binventoryPositions\b", query):
            return _json({"data": {"inventoryPositions": state.inventory_positions(variables)}})
        if re.search(r"\bcreateOrder\b", query):
            return _json(_create_orders(state, query, variables))
        raise GraphQLError("The simulator supports only inventoryPositions and createOrder")
    except GraphQLError as exc:
        name = "createOrder" if re.search(r"\bcreateOrder\b", query) else None
        data = {name: None} if name else None
        return _json({"data": data, "errors": [exc.as_dict()]})


_CREATE_ORDER_FIELD = re.compile(
    r"(?:\b(\w+)\s*:\s*)?\bcreateOrder\s*\(\s*input\s*:\s*\$(\w+)\s*\)"
)


def _create_orders(
    state: SimulatorState, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """One or more (aliased) ``createOrder`` fields, executed in document order as a
    GraphQL server runs the fields of a mutation: each field's error goes to ``errors[]``
    with its ``path`` (the alias) and that field's data is null; the others still run."""
    fields = _CREATE_ORDER_FIELD.findall(query) or [("", "input")]
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for alias, variable in fields:
        name = alias or "createOrder"
        try:
            data[name] = state.create_order(variables.get(variable))
        except GraphQLError as exc:
            data[name] = None
            errors.append({**exc.as_dict(), "path": [name]})
    return {"data": data, "errors": errors} if errors else {"data": data}


# --- /_sim/ inspection and faults ------------------------------------------------------


async def _sim_inventory(request: web.Request) -> web.Response:
    return _json(_state(request).inventory_snapshot())


async def _sim_batches(request: web.Request) -> web.Response:
    return _json(_state(request).batches_snapshot())


async def _sim_jobs(request: web.Request) -> web.Response:
    return _json(_state(request).jobs_snapshot())


async def _sim_orders(request: web.Request) -> web.Response:
    return _json(_state(request).orders_snapshot())


async def _sim_calls(request: web.Request) -> web.Response:
    state = _state(request)
    return _json({path: dict(by_status) for path, by_status in state.calls.items()})


async def _sim_reset(request: web.Request) -> web.Response:
    _state(request).reset()
    return _json({"reset": True})


async def _sim_process(request: web.Request) -> web.Response:
    return _json({"completed": _state(request).process_pending()})


def _faults_view(state: SimulatorState) -> dict[str, Any]:
    now = state.clock()
    return {
        "faults": [f.as_dict() for f in state.faults if f.active(now)],
        "recordErrors": state.record_errors,
    }


async def _sim_add_faults(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _json_body(request)
        specs = body if isinstance(body, list) else [body]
        for spec in specs:
            if not isinstance(spec, dict):
                raise ApiError(400, "a fault is a JSON object")
            state.add_fault(spec)
    except ApiError as exc:
        return exc.response()
    return _json(_faults_view(state))


async def _sim_get_faults(request: web.Request) -> web.Response:
    return _json(_faults_view(_state(request)))


async def _sim_clear_faults(request: web.Request) -> web.Response:
    state = _state(request)
    state.clear_faults()
    return _json(_faults_view(state))


class _SafeAccessLogger(AbstractAccessLogger):
    """Access log without query strings: a legacy token request carries credentials there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s -> %s (%.1f ms)", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def create_simulator_app(
    state: SimulatorState | None = None,
    *,
    token_ttl: float = 3600,
    refresh_enabled: bool = True,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    retailer_id: str = DEFAULT_RETAILER_ID,
    refresh_token_ttl: float = 7 * 86400.0,
    batch_polls: int = 2,
    clock: Clock | None = None,
) -> web.Application:
    """The simulator as an aiohttp application.

    The keyword arguments set ``state.config`` (replacing the config of a given ``state``);
    ``clock`` (epoch seconds, default ``time.time``) replaces the state's clock when given.

    Fault objects for ``POST /_sim/faults`` (one object or a list):
    ``{"status": 503, "count": 3, "path": "/api/v4.1/job"}`` next N matching calls (path is
    a prefix, any path if omitted; ``count`` defaults to 1), ``{"status": 429, "retryAfter":
    1, "seconds": 2}`` for a duration on the simulator clock, ``{"latency": 0.5, "count":
    10}``, ``{"expireTokens": true}`` (and ``expireRefreshTokens``), ``{"recordErrors":
    {"SKU-1": "404"}}`` (key SKU or ``SKU:LOC``; value a code or ``{code, message}``).
    ``DELETE /_sim/faults`` clears all of them.
    """
    if state is None:
        state = SimulatorState(clock or time.time)
    elif clock is not None:
        state.clock = clock
    state.config = SimulatorConfig(
        username=username,
        password=password,
        client_id=client_id,
        client_secret=client_secret,
        retailer_id=retailer_id,
        token_ttl=token_ttl,
        refresh_enabled=refresh_enabled,
        refresh_token_ttl=refresh_token_ttl,
        batch_polls=batch_polls,
    )
    app = web.Application(middlewares=[_fluent_middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_post(f"{API_PREFIX}/job", _create_job)
    app.router.add_get(f"{API_PREFIX}/job", _list_jobs)
    app.router.add_get(f"{API_PREFIX}/job/{{job_id}}", _get_job)
    app.router.add_post(f"{API_PREFIX}/job/{{job_id}}/batch", _create_batch)
    app.router.add_get(f"{API_PREFIX}/job/{{job_id}}/batch/{{batch_id}}", _get_batch)
    app.router.add_post("/graphql", _graphql)
    app.router.add_get("/_sim/inventory", _sim_inventory)
    app.router.add_get("/_sim/batches", _sim_batches)
    app.router.add_get("/_sim/jobs", _sim_jobs)
    app.router.add_get("/_sim/orders", _sim_orders)
    app.router.add_get("/_sim/calls", _sim_calls)
    app.router.add_post("/_sim/reset", _sim_reset)
    app.router.add_post("/_sim/process", _sim_process)
    app.router.add_get("/_sim/faults", _sim_get_faults)
    app.router.add_post("/_sim/faults", _sim_add_faults)
    app.router.add_delete("/_sim/faults", _sim_clear_faults)
    return app


class SimulatorServer:
    """A running simulator (AppRunner + TCPSite on the current loop)."""

    def __init__(self, runner: web.AppRunner, state: SimulatorState, host: str, port: int) -> None:
        self.runner = runner
        self.state = state
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_simulator(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> SimulatorServer:
    """Start the simulator on ``host:port`` (0 = a free port); ``kw`` go to the app factory."""
    state: SimulatorState | None = kw.pop("state", None)
    app = create_simulator_app(state, **kw)
    runner = web.AppRunner(
        app, access_log_class=_SafeAccessLogger, access_log=log, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    server = SimulatorServer(runner, app[STATE_KEY], host, bound_port)
    log.info("Fluent simulator listening on %s", server.url)
    return server


async def serve_simulator(host: str, port: int, stop: asyncio.Event, **kw: Any) -> None:
    """Run the simulator until ``stop`` is set; logs (never prints) where it listens."""
    server = await start_simulator(host, port, **kw)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("Fluent simulator stopped")
