"""Delta detection for the Fluent sync: pure functions and the sync-run lifecycle.

A SKU/location is *dirty* while the quantity that should be in Fluent (its sellable
quantity) differs from the last quantity Fluent accepted for it. Nothing here reads the
clock: ``now_us`` (microseconds since the epoch, UTC) is always passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")

#: Lifecycle of one flush, in order; ``failed`` may follow any state.
RUN_STATES = ("collecting", "creating_job", "sending_batches", "polling_batches", "completed")
FAILED = "failed"


def sellable_quantity(atp: int, held_by_reservations: int, policy: str) -> int:
    """What Fluent should hold: ATP minus units held by active pre-orders, floored at 0."""
    if policy == "atp":
        return max(0, atp)
    return max(0, atp - held_by_reservations)


def is_dirty(sellable: int, accepted: dict[str, Any] | None) -> bool:
    return accepted is None or accepted.get("qty") != sellable


def due(accepted: dict[str, Any] | None, now_us: int) -> bool:
    """False while a key that failed is waiting out its backoff."""
    return accepted is None or int(accepted.get("retryAt", 0)) <= now_us


def select_dirty(
    candidates: Iterable[tuple[str, int, dict[str, Any] | None]],
    now_us: int,
    full_resync: bool = False,
) -> list[tuple[str, int]]:
    """``(key, sellable, accepted)`` → the ``(key, sellable)`` to send now, sorted by key.

    A full resync sends every key whatever Fluent accepted before (it heals drift).
    """
    out = [
        (key, sellable)
        for key, sellable, accepted in candidates
        if full_resync or (is_dirty(sellable, accepted) and due(accepted, now_us))
    ]
    out.sort()
    return out


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def failure_backoff_us(failures: int, base_s: float, cap_s: float, rng: Callable[[], float]) -> int:
    """Exponential backoff with jitter for a record Fluent refused ``failures`` times."""
    ceiling = min(cap_s, base_s * 2.0 ** max(failures - 1, 0))
    return int((0.5 + 0.5 * max(0.0, min(1.0, rng()))) * ceiling * 1_000_000)


def accepted_entry(qty: int, at_us: int, batch_id: str) -> dict[str, Any]:
    return {"qty": qty, "acceptedAt": at_us, "batchId": batch_id, "failures": 0, "retryAt": 0}


def apply_ack(
    entry: dict[str, Any] | None, qty: int, at_us: int, batch_id: str
) -> tuple[dict[str, Any] | None, bool]:
    """Record that Fluent accepted ``qty``; an older acknowledgement never overwrites a newer one."""
    if entry is not None and int(entry.get("acceptedAt", 0)) > at_us:
        return entry, False
    new = accepted_entry(qty, at_us, batch_id)
    if entry is not None and entry.get("qty") == qty and entry.get("batchId") == batch_id:
        return entry, False
    return new, True


def reconcile_entry(
    entry: dict[str, Any] | None, fluent_on_hand: int, read_at_us: int
) -> tuple[dict[str, Any] | None, bool]:
    """Fluent holds ``fluent_on_hand`` (read at ``read_at_us``) for a key it last accepted
    ``entry["qty"]`` of. They differ: a drift. The entry then records what Fluent holds,
    so the sellable quantity differs from it and the next flush sends it again (heals).
    A key never accepted is not a drift (it is dirty already, or not ours); nor is one
    accepted after the read (the read is older than what Fluent was last told)."""
    if entry is None or "qty" not in entry or int(entry.get("acceptedAt", 0)) > read_at_us:
        return entry, False
    if int(entry["qty"]) == fluent_on_hand:
        return entry, False
    drift = {"was": entry["qty"], "fluent": fluent_on_hand, "at": read_at_us}
    return {**entry, "qty": fluent_on_hand, "drift": drift}, True


def apply_failure(
    entry: dict[str, Any] | None,
    error: str,
    at_us: int,
    batch_id: str,
    backoff: Callable[[int], int],
) -> tuple[dict[str, Any] | None, bool]:
    """Record a refused record: it stays dirty and waits ``backoff(failures)`` before retrying."""
    current: dict[str, Any] = (
        dict(entry) if entry is not None else {"qty": None, "acceptedAt": 0, "batchId": None}
    )
    if current.get("lastFailedBatch") == batch_id:
        return entry, False  # redelivered acknowledgement
    failures = int(current.get("failures", 0)) + 1
    current.update(
        failures=failures,
        retryAt=at_us + backoff(failures),
        lastError=error[:300],
        lastFailedBatch=batch_id,
    )
    return current, True


def iso_us(us: int) -> str | None:
    if not us:
        return None
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SyncRun:
    """One flush: its lifecycle state, counts, batch ids and errors."""

    run_id: str
    started_at_us: int
    full_resync: bool = False
    state: str = "collecting"
    history: list[tuple[str, int]] = field(default_factory=list)
    dirty: int = 0
    records_sent: int = 0
    accepted: int = 0
    failed: int = 0
    job_id: str | None = None
    batch_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished_at_us: int | None = None

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append((self.state, self.started_at_us))

    def advance(self, state: str, now_us: int) -> None:
        if self.state in ("completed", FAILED):
            raise ValueError(f"run {self.run_id} already ended ({self.state})")
        if state != FAILED:
            if state not in RUN_STATES:
                raise ValueError(f"unknown run state {state!r}")
            if RUN_STATES.index(state) <= RUN_STATES.index(self.state):
                raise ValueError(f"run cannot go from {self.state} to {state}")
        self.state = state
        self.history.append((state, now_us))
        if state in ("completed", FAILED):
            self.finished_at_us = now_us

    def fail(self, error: str, now_us: int) -> None:
        self.errors.append(error[:500])
        self.advance(FAILED, now_us)

    @property
    def outcome(self) -> str | None:
        """``ok`` (every record accepted), ``partial`` (some refused), ``rejected`` (none
        accepted), ``failed`` (the run broke off); None while running. A run that ended
        but did not get every record in is never shown as a success."""
        if self.state == FAILED:
            return FAILED
        if self.state != "completed":
            return None
        if not self.failed:
            return "ok"
        return "partial" if self.accepted else "rejected"

    def as_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "state": self.state,
            "outcome": self.outcome,
            "fullResync": self.full_resync,
            "startedAt": iso_us(self.started_at_us),
            "finishedAt": iso_us(self.finished_at_us or 0),
            "durationSeconds": (
                round((self.finished_at_us - self.started_at_us) / 1e6, 3)
                if self.finished_at_us
                else None
            ),
            "dirty": self.dirty,
            "recordsSent": self.records_sent,
            "accepted": self.accepted,
            "failed": self.failed,
            "jobId": self.job_id,
            "batchIds": list(self.batch_ids),
            "errors": list(self.errors),
            "history": [{"state": s, "at": iso_us(t)} for s, t in self.history],
        }
