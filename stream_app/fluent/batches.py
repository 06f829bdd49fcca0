"""Inventory batches: the records sent, the entities Fluent takes, and the outcome rule (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_BATCH_RECORDS = 5000
COMPLETE = frozenset({"COMPLETE", "COMPLETED"})
FAILED = frozenset({"FAILED", "ERROR", "ABORTED"})


@dataclass(frozen=True, slots=True)
class InventoryRecord:
    """One absolute LAST_ON_HAND quantity for a SKU at a location."""

    sku: str
    location: str
    qty: int


@dataclass(slots=True)
class BatchOutcome:
    """What Fluent made of one batch, per (sku, location).

    Rule: a record is *accepted* when its ``results[]`` entry has a 2xx ``responseCode``
    and *failed* (with ``"<code> <message>"``) when the code is anything else. A record sent
    but absent from ``results[]`` counts as accepted only when the COMPLETE batch reported
    no results at all; otherwise it is failed ("no result reported") so that it stays dirty
    and is sent again (harmless: absolute quantities, UPSERT). A batch with status FAILED or
    ERROR fails every record.
    """

    job_id: str
    batch_id: str
    status: str
    accepted: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)


class SubmittedBatch(NamedTuple):
    job_id: str
    batch_id: str


def inventory_entities(
    records: Sequence[InventoryRecord], retailer_id: str
) -> list[dict[str, Any]]:
    """Batch entities for absolute LAST_ON_HAND quantities."""
    return [
        {
            "retailerId": retailer_id,
            "skuRef": r.sku,
            "locationRef": r.location,
            "qty": r.qty,
            "correctedQty": 0,
            "type": "LAST_ON_HAND",
            "status": "ACTIVE",
        }
        for r in records
    ]


def batch_outcome(
    job_id: str,
    batch_id: str,
    body: Mapping[str, Any],
    records: Sequence[InventoryRecord] | None = None,
) -> BatchOutcome:
    """Apply the :class:`BatchOutcome` rule to a batch status body."""
    status = str(body.get("status", "")).upper()
    outcome = BatchOutcome(job_id=job_id, batch_id=batch_id, status=status)
    results = body.get("results") or []
    by_ref: dict[str, tuple[bool, str]] = {}
    for item in results:
        if not isinstance(item, Mapping):
            continue
        ref = str(item.get("entityRef", ""))
        code = str(item.get("responseCode", "")).strip()
        ok = code.startswith("2")
        message = "" if ok else f"{code} {item.get('message') or ''}".strip()
        # A failure wins over a success for the same ref (duplicates in one batch).
        if ref not in by_ref or by_ref[ref][0]:
            by_ref[ref] = (ok, message)
    if records is None:
        for ref, (ok, message) in by_ref.items():
            sku, _, location = ref.rpartition(":")
            key = (sku, location)
            if ok:
                outcome.accepted.append(key)
            else:
                outcome.failed[key] = message
        return outcome
    failed_batch = status in FAILED
    seen: set[tuple[str, str]] = set()
    for record in records:
        key = (record.sku, record.location)
        if key in seen:
            continue
        seen.add(key)
        if failed_batch:
            outcome.failed[key] = f"batch {status}"
            continue
        entry = by_ref.get(f"{record.sku}:{record.location}")
        if entry is None:
            if by_ref:
                outcome.failed[key] = "no result reported for this record"
            else:
                outcome.accepted.append(key)
        elif entry[0]:
            outcome.accepted.append(key)
        else:
            outcome.failed[key] = entry[1]
    return outcome
