"""The in-memory Fluent: tokens, jobs, batches, inventory positions, orders, events, faults
and the call log. Plain state, mutated only on the event loop; no HTTP and no GraphQL here.

Deterministic by design: time comes from an injected clock (epoch seconds), batches
advance PENDING -> RUNNING -> COMPLETE on status polls (``SimulatorConfig.batch_polls``),
and faults are counted or bounded by the same clock.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stream_app.fluent.simulator.common import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_RETAILER_ID,
    DEFAULT_USERNAME,
    MAX_BATCH_ENTITIES,
    ApiError,
    Clock,
    iso,
    utc_day,
)
from stream_app.fluent.simulator.faults import Fault, parse_fault_spec, take_faults

_REQUIRED_ENTITY_FIELDS = ("retailerId", "skuRef", "locationRef", "qty")


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
    """One inventory position; its only quantity is LAST_ON_HAND (``qty``)."""

    retailer_id: str
    sku_ref: str
    location_ref: str
    qty: int
    corrected_qty: int
    entity_id: str
    created_at: float
    updated_at: float
    batch_id: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.retailer_id, self.sku_ref, self.location_ref

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


class SimulatorState:
    """Everything the simulator holds."""

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
        """By ref: the Order as GraphQL returns it (see ``resolvers.create_order``)."""
        self.events: list[dict[str, Any]] = []
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
        if job.closed or utc_day(self.clock()) > utc_day(job.created_at):
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

    def job_results(self, job: Job) -> dict[str, Any]:
        """``GET /job/{id}/results``: every batch of the job as its status GET shows it (a
        list in Fluent's ``start/count/total/results`` form). Not a status poll: batches do
        not advance. The shape is undocumented (fact sheet section 2, [?])."""
        views = [self.batch_view(self.batches[i]) for i in job.batch_ids]
        return {
            "jobId": job.id,
            "status": self.job_status(job),
            "start": 1,
            "count": len(views),
            "total": len(views),
            "results": views,
        }

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
                    retailer_id=retailer,
                    sku_ref=sku,
                    location_ref=location,
                    qty=qty,
                    corrected_qty=corrected,
                    entity_id=self.next_id("entity"),
                    created_at=now,
                    updated_at=now,
                    batch_id=batch.id,
                )
                self.inventory[key] = row
            elif preprocessing and row.qty == qty and row.corrected_qty == corrected:
                pass  # BPP drops unchanged records: nothing is written.
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

    # --- events ----------------------------------------------------------------------
    def record_event(self, mode: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """Keep a (validated) Event API call. No workflow runs: an async event stays
        PENDING, a sync one is COMPLETE at once."""
        record = {
            "eventId": str(uuid.uuid4()),
            "mode": mode,
            "eventStatus": "COMPLETE" if mode == "sync" else "PENDING",
            "receivedOn": iso(self.clock()),
            "event": dict(event),
        }
        self.events.append(record)
        return record

    # --- faults and calls ----------------------------------------------------------------
    def add_fault(self, spec: Mapping[str, Any]) -> None:
        """Apply one ``POST /_sim/faults`` object (see :mod:`.faults`)."""
        parsed = parse_fault_spec(spec, self.clock())
        if parsed.expire_tokens:
            self.expire_tokens(refresh=parsed.expire_refresh_tokens)
        self.record_errors.update(parsed.record_errors)
        if parsed.fault is not None:
            self.faults.append(parsed.fault)

    def clear_faults(self) -> None:
        self.faults.clear()
        self.record_errors.clear()

    def take_faults(self, method: str, path: str) -> tuple[float, Fault | None]:
        """The latency and the status fault (if any) that apply to this call; consumes them."""
        return take_faults(self.faults, method, path, self.clock())

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
