"""Nightly release of one reservation book: allocation, Fluent order input, the report.

Two steps, so a crash anywhere is safe to rerun:

1. :func:`allocate_release` (for every reservation with shipDate ≤ the release date):
   uncommitted reservations past ``expiresAt`` (commits required) → EXPIRED; the
   RESERVED ones, in release order, → CONFIRMING while current ATP lasts (the order is
   now pending), else CANCELLED ``insufficient_inventory``; WAITLISTED ones → CANCELLED
   ``not_allocated``. It returns ``to_order``: every CONFIRMING / RELEASE_FAILED
   reservation of the book, whose Fluent order must be (re)created.
2. The glue creates each order (deterministic ref ``PO-<reservationId>``, so a retry never
   creates a second one) and records :func:`order_created` → CONFIRMED or
   :func:`order_failed` → RELEASE_FAILED (retried by the next run).

Units of CONFIRMING / RELEASE_FAILED reservations are not yet in the OMS, so a later run
subtracts them from current ATP before allocating: nothing is allocated twice. CONFIRMED
reservations are assumed to be reflected in current ATP already. Running the allocation
again on the same state changes nothing.

Release order: committed ones first when ``committed_first``, then earlier ship date (its
units were promised first by the cumulative rule), then tier score, then sequence. It is
greedy: an item that does not fit what is left is cancelled and smaller later items may
still be confirmed (nothing is held back for a later run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from croniter import croniter

from stream_app.domain.book import ReservationBook
from stream_app.domain.ids import iso, parse_iso, require_aware
from stream_app.domain.model import EventType, Outcome, Reason, Reservation, Status, Transition
from stream_app.domain.preorders import Policy

PENDING = frozenset({Status.CONFIRMING, Status.RELEASE_FAILED})


@dataclass
class ReleaseOutcome:
    """``changed``/``events``/``header_changed`` as in :class:`Outcome`; ``to_order``: the
    reservations whose Fluent order must be created now, in release order."""

    changed: list[Reservation] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    to_order: list[Reservation] = field(default_factory=list)
    header_changed: bool = False
    rewrite: list[Reservation] = field(default_factory=list)


def release_key(reservation: Reservation, policy: Policy) -> tuple[int, date, int, int]:
    committed_group = 0 if (policy.committed_first and reservation.committed) else 1
    return (committed_group, reservation.ship_date, -reservation.tier_score, reservation.sequence)


def plan_release(
    book: ReservationBook, release_date: date, current_atp: int, policy: Policy, now: datetime
) -> list[Transition]:
    """The status changes a release of ``release_date`` makes (pure; see module doc)."""
    require_aware(now)
    expired: list[Transition] = []
    eligible: list[Reservation] = []
    waitlisted: list[Reservation] = []
    held_pending = 0
    for reservation in book.reservations():
        status = reservation.status
        if status in PENDING or (status is Status.CONFIRMED and not reservation.settled):
            # allocated earlier, and the stock the release sees may not reflect it yet
            held_pending += reservation.quantity
        if reservation.ship_date > release_date:
            continue
        if status is Status.RESERVED:
            if (
                policy.commit_required
                and not reservation.committed
                and now >= reservation.expires_at
            ):
                expired.append(
                    Transition(
                        reservation.reservation_id,
                        Status.EXPIRED,
                        Reason.NOT_COMMITTED,
                        EventType.EXPIRED,
                    )
                )
            else:
                eligible.append(reservation)
        elif status is Status.WAITLISTED:
            waitlisted.append(reservation)
    budget = current_atp - held_pending
    allocations: list[Transition] = []
    for reservation in sorted(eligible, key=lambda r: release_key(r, policy)):
        if reservation.quantity <= budget:
            budget -= reservation.quantity
            allocations.append(Transition(reservation.reservation_id, Status.CONFIRMING))
        else:
            allocations.append(
                Transition(
                    reservation.reservation_id,
                    Status.CANCELLED,
                    Reason.INSUFFICIENT_INVENTORY,
                    EventType.CANCELLED,
                )
            )
    not_allocated = [
        Transition(r.reservation_id, Status.CANCELLED, Reason.NOT_ALLOCATED, EventType.CANCELLED)
        for r in sorted(waitlisted, key=lambda r: release_key(r, policy))
    ]
    return expired + allocations + not_allocated


def plan_outcome(transition: Transition) -> str:
    """What a planned transition means for its customer: ``ordered`` (a Fluent order is
    created), ``expired``, ``cancelled_<reason>``."""
    if transition.status is Status.CONFIRMING:
        return "ordered"
    if transition.status is Status.EXPIRED:
        return "expired"
    return f"cancelled_{transition.reason or 'other'}"


def plan_counts(
    book: ReservationBook, transitions: Iterable[Transition], into: dict[str, dict[str, int]]
) -> None:
    """Add ``transitions`` (a :func:`plan_release` of ``book``) to ``into``: reservations
    by tier, then by :func:`plan_outcome` (and ``units_<outcome>``)."""
    for transition in transitions:
        reservation = book.get(transition.reservation_id)
        if reservation is None:
            continue
        tier = into.setdefault(reservation.tier, {})
        outcome = plan_outcome(transition)
        tier[outcome] = tier.get(outcome, 0) + 1
        tier[f"units_{outcome}"] = tier.get(f"units_{outcome}", 0) + reservation.quantity


def pending_orders(book: ReservationBook, policy: Policy) -> list[Reservation]:
    """CONFIRMING / RELEASE_FAILED reservations (their order is still to create)."""
    pending = [r for r in book.reservations() if r.status in PENDING]
    return sorted(pending, key=lambda r: release_key(r, policy))


def allocate_release(
    book: ReservationBook,
    release_date: date,
    current_atp: int,
    policy: Policy,
    now: datetime,
    cause: str | None = None,
) -> ReleaseOutcome:
    """Step 1 of the release: apply :func:`plan_release` to the book (mutates it).

    ``current_atp``: the SKU/location's ATP at release time. CONFIRMING emits no event
    (CONFIRMED follows :func:`order_created`); EXPIRED and CANCELLED do.
    """
    outcome = book.apply_transitions(
        plan_release(book, release_date, current_atp, policy, now), now, cause
    )
    return ReleaseOutcome(
        changed=outcome.changed,
        events=outcome.events,
        to_order=pending_orders(book, policy),
        header_changed=outcome.header_changed,
    )


def order_created(
    book: ReservationBook,
    reservation_id: str,
    now: datetime,
    cause: str | None = None,
    event_at: datetime | None = None,
) -> Outcome:
    """Fluent accepted the order: CONFIRMING/RELEASE_FAILED → CONFIRMED (event CONFIRMED).
    Idempotent: an already CONFIRMED reservation is left alone.

    ``event_at``: the event's ``at`` when it must not depend on ``now`` (the run's start:
    a confirmation made again after its write was lost makes the same event);
    ``confirmedAt`` is ``now``."""
    reservation = book.get(reservation_id)
    if reservation is None:
        return Outcome(error="not_found")
    if reservation.status is Status.CONFIRMED:
        return Outcome(reservation=reservation)
    if reservation.status not in PENDING:
        return Outcome(reservation=reservation, error="not_pending")
    outcome = book.apply_transitions(
        [Transition(reservation_id, Status.CONFIRMED, None, EventType.CONFIRMED)],
        now,
        cause,
        event_at=event_at,
    )
    outcome.reservation = reservation
    return outcome


def order_failed(book: ReservationBook, reservation_id: str, error: str, now: datetime) -> Outcome:
    """Creating the order failed: → RELEASE_FAILED (reason = the error, no event); it
    keeps its units and the next release retries it."""
    reservation = book.get(reservation_id)
    if reservation is None:
        return Outcome(error="not_found")
    if reservation.status not in PENDING:
        return Outcome(reservation=reservation, error="not_pending")
    outcome = book.apply_transitions(
        [Transition(reservation_id, Status.RELEASE_FAILED, error[:500])], now
    )
    outcome.reservation = reservation
    return outcome


def fluent_order_ref(reservation_id: str) -> str:
    """Deterministic Fluent order ref: a rerun finds the same order, never a second one."""
    return f"PO-{reservation_id}"


def create_order_input(reservation: Reservation, retailer_id: str) -> dict[str, Any]:
    """``CreateOrderInput`` for the fulfilment order of one released reservation."""
    return {
        "ref": fluent_order_ref(reservation.reservation_id),
        "type": "HD",
        "retailer": {"id": retailer_id},
        "customer": {"id": reservation.customer_id},
        "items": [
            {
                "ref": reservation.reservation_id,
                "productRef": reservation.sku,
                "quantity": reservation.quantity,
            }
        ],
    }


def outcome_label(reservation: Reservation) -> str:
    """CONFIRMED, CONFIRMING, RELEASE_FAILED, EXPIRED, CANCELLED_<REASON>, …"""
    if reservation.status is Status.CANCELLED and reservation.reason:
        return f"CANCELLED_{reservation.reason.upper()}"
    return reservation.status.value


def release_report(
    release_date: date,
    reservations: Iterable[Reservation],
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> dict[str, Any]:
    """Counts (reservations and units) by tier and outcome of the reservations a release
    touched, e.g. ``ReleaseOutcome.changed + to_order`` of every book, in their state after
    order creation. Each reservation id is counted once."""
    by_tier: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    units: dict[str, int] = {}
    seen: set[str] = set()
    for reservation in reservations:
        if reservation.reservation_id in seen:
            continue
        seen.add(reservation.reservation_id)
        label = outcome_label(reservation)
        tier = by_tier.setdefault(reservation.tier, {})
        tier[label] = tier.get(label, 0) + 1
        totals[label] = totals.get(label, 0) + 1
        units[label] = units.get(label, 0) + reservation.quantity
    report: dict[str, Any] = {
        "releaseDate": release_date.isoformat(),
        "reservations": len(seen),
        "totals": dict(sorted(totals.items())),
        "units": dict(sorted(units.items())),
        "byTier": {tier: dict(sorted(counts.items())) for tier, counts in sorted(by_tier.items())},
        "startedAt": iso(started_at) if started_at else None,
        "finishedAt": iso(finished_at) if finished_at else None,
        "durationSeconds": (
            (finished_at - started_at).total_seconds() if started_at and finished_at else None
        ),
    }
    return report


# --- scheduling, run reports (issue 5) --------------------------------------------------

#: statuses (with reasons for CANCELLED) a release leaves reservations in
RELEASE_CANCEL_REASONS = frozenset({Reason.INSUFFICIENT_INVENTORY, Reason.NOT_ALLOCATED})
#: partition run states after which a redelivered command changes nothing
FINAL_PART_STATES = frozenset({"completed", "skipped"})


def release_date_at(now: datetime, tz: tzinfo) -> date:
    """The release date of a run starting at ``now``: today in the release timezone."""
    return require_aware(now).astimezone(tz).date()


def due_release_date(cron: str, tz: tzinfo, now: datetime) -> date:
    """The release date of the most recent scheduled release at or before ``now``.

    ``0 2 * * *`` in UTC at 2030-02-01 01:00 → 2030-01-31 (today's 02:00 has not come);
    at 02:00 or later → 2030-02-01. A worker starting up compares it with the last
    scheduled release that completed: anything older was missed (Faust does not catch up
    crontab runs) and a release of this date covers every earlier one.
    """
    local = require_aware(now).astimezone(tz)
    # croniter works on naive local wall-clock times here: the crontab fires at wall-clock
    # times of ``tz`` (as Faust's crontab does)
    naive = local.replace(tzinfo=None)
    if croniter.match(cron, naive):
        return naive.date()
    previous: datetime = croniter(cron, naive).get_prev(datetime)
    return previous.date()


def catch_up_needed(last_completed: date | None, due: date) -> bool:
    """A missed scheduled release: none completed yet, or the last one is older than due."""
    return last_completed is None or last_completed < due


def released_by_run(reservation: Reservation, started_at: datetime) -> bool:
    """Whether a run that started at ``started_at`` left ``reservation`` in its state:
    a release outcome (CONFIRMING, CONFIRMED, RELEASE_FAILED, EXPIRED, CANCELLED by the
    release) reached since the run started. Counting from the book state rather than from
    what one attempt touched keeps a report right when a crashed run is resumed."""
    if reservation.updated_at < started_at:
        return False
    status = reservation.status
    if status is Status.CANCELLED:
        return reservation.reason in RELEASE_CANCEL_REASONS
    return status in PENDING or status in (Status.CONFIRMED, Status.EXPIRED)


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for label, value in counts.items():
        into[label] = into.get(label, 0) + int(value)


def merge_run_reports(
    run_id: str, parts: Iterable[dict[str, Any]], partitions: int, max_failures: int = 50
) -> dict[str, Any] | None:
    """One run's report from its per-partition reports (any order, duplicates by
    partition resolved to the most advanced); None when no partition reported yet.

    State: ``running`` until every partition finished, then ``completed`` (or
    ``completed_with_failures`` when an order could not be created, or ``skipped``
    when every partition had nothing due)."""
    by_partition: dict[int, dict[str, Any]] = {}
    for part in parts:
        if part.get("runId") != run_id:
            continue
        number = int(part["partition"])
        seen = by_partition.get(number)
        if seen is None or _progress_rank(part) >= _progress_rank(seen):
            by_partition[number] = part
    if not by_partition:
        return None
    ordered = [by_partition[p] for p in sorted(by_partition)]
    first = ordered[0]
    totals: dict[str, int] = {}
    units: dict[str, int] = {}
    by_tier: dict[str, dict[str, int]] = {}
    orders = {"toOrder": 0, "created": 0, "alreadyExisted": 0, "failed": 0}
    failures: list[dict[str, Any]] = []
    for part in ordered:
        counts = part.get("counts") or {}
        _add_counts(totals, counts.get("totals") or {})
        _add_counts(units, counts.get("units") or {})
        for tier, tier_counts in (counts.get("byTier") or {}).items():
            _add_counts(by_tier.setdefault(tier, {}), tier_counts)
        for name in orders:
            orders[name] += int((part.get("orders") or {}).get(name, 0))
        failures.extend(part.get("failures") or [])
    states = [str(p.get("state")) for p in ordered]
    if len(ordered) < partitions or any(s not in FINAL_PART_STATES for s in states):
        state = "running"
    elif all(s == "skipped" for s in states):
        state = "skipped"
    elif orders["failed"]:
        state = "completed_with_failures"
    else:
        state = "completed"
    starts = [str(p["startedAt"]) for p in ordered if p.get("startedAt")]
    ends = [str(p["finishedAt"]) for p in ordered if p.get("finishedAt")]
    started = min(starts) if starts else None
    finished = max(ends) if ends and state != "running" else None
    duration = None
    if started and finished:
        duration = (parse_iso(finished) - parse_iso(started)).total_seconds()
    return {
        "runId": run_id,
        "releaseDate": first.get("releaseDate"),
        "trigger": first.get("trigger"),
        "requestedAt": first.get("requestedAt"),
        "state": state,
        "partitionsTotal": partitions,
        "partitionsDone": sum(1 for s in states if s in FINAL_PART_STATES),
        "reservations": sum(totals.values()),
        "totals": dict(sorted(totals.items())),
        "units": dict(sorted(units.items())),
        "byTier": {t: dict(sorted(c.items())) for t, c in sorted(by_tier.items())},
        "orders": orders,
        "failures": failures[:max_failures],
        "startedAt": started,
        "finishedAt": finished,
        "durationSeconds": duration,
        "partitions": [
            {
                key: part.get(key)
                for key in (
                    "partition", "state", "books", "attempts", "orders", "timings", "startedAt",
                    "finishedAt", "worker",
                )
            }
            for part in ordered
        ],
    }


_STATE_RANK = {"allocating": 0, "ordering": 1, "interrupted": 1, "skipped": 2, "completed": 2}


def _progress_rank(part: dict[str, Any]) -> tuple[int, int, str]:
    orders = part.get("orders") or {}
    done = int(orders.get("created", 0)) + int(orders.get("alreadyExisted", 0))
    return (_STATE_RANK.get(str(part.get("state")), 0), done, str(part.get("updatedAt") or ""))
