"""One reservation: its statuses, events, refusals and the outcome of an operation.

Statuses: RESERVED and WAITLISTED are queued (ranked); RESERVED, CONFIRMING (release
allocated it, Fluent order pending) and RELEASE_FAILED (order creation failed, retried by
the next release) hold units; REJECTED, CONFIRMED, CANCELLED and EXPIRED are final.
``committed`` (payment captured) is kept apart from the status.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from stream_app.domain.ids import (
    iso,
    parse_iso,
)
from stream_app.domain.priority import PriorityKey, priority_key


class Status(StrEnum):
    RESERVED = "RESERVED"
    WAITLISTED = "WAITLISTED"
    REJECTED = "REJECTED"
    CONFIRMING = "CONFIRMING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    RELEASE_FAILED = "RELEASE_FAILED"


#: statuses whose units count against future ATP (and against sellable stock); a CONFIRMED
#: reservation also holds its units until the stock reflects its order (``settled``)
HOLDING = frozenset({Status.RESERVED, Status.CONFIRMING, Status.RELEASE_FAILED})
#: statuses that count towards ``max_per_customer``
COUNTED = HOLDING | {Status.WAITLISTED, Status.CONFIRMED}
FINAL = frozenset({Status.REJECTED, Status.CONFIRMED, Status.CANCELLED, Status.EXPIRED})


class EventType(StrEnum):
    RESERVED = "RESERVED"
    WAITLISTED = "WAITLISTED"
    REJECTED = "REJECTED"
    BUMPED = "BUMPED"
    PROMOTED = "PROMOTED"
    COMMITTED = "COMMITTED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class Reason:
    """Reason codes carried by reservations and events."""

    INSUFFICIENT_INVENTORY = "insufficient_inventory"
    QUEUE_FULL = "queue_full"
    MAX_PER_CUSTOMER = "max_per_customer"
    PREEMPTED = "preempted_by_higher_tier"
    CANCELLED = "cancelled"
    NOT_COMMITTED = "not_committed"
    NOT_ALLOCATED = "not_allocated"


# --- the reservation -------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Reservation:
    """One item of one pre-order in one SKU/location queue.

    ``sequence``: immutable 1-based arrival number in its ship-date queue (every placed
    item takes one, rejected ones included); ``tier_score``: the tier's score when it
    arrived (its priority never changes afterwards); ``expires_at``: commit deadline.
    """

    reservation_id: str
    order_id: str
    item_index: int
    customer_id: str
    customer_email: str
    sku: str
    location: str
    ship_date: date
    quantity: int
    tier: str
    tier_score: int
    sequence: int
    status: Status
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    committed: bool = False
    #: rank in its queue as of this reservation's last change (others' changes shift it;
    #: ask :meth:`ReservationBook.queue_position` for the live value)
    queue_position: int | None = None
    reason: str | None = None
    available: int | None = None
    product_name: str = ""
    source: str = ""
    category: str | None = None
    #: when the Fluent order was created (CONFIRMED), and whether the stock reported by the
    #: channels reflects it since: until then the units stay held (never promised again)
    confirmed_at: datetime | None = None
    settled: bool = False
    #: the events this reservation was the subject of, as entries ``[cause, index, type,
    #: queuePosition, reason, at(, effects)]`` (the last :data:`HISTORY_KEPT`): stored with
    #: it, so a replayed cause sends the recorded events again (``effects``: on the subject
    #: of an operation, what it did to the others, re-applied if their write was lost); an
    #: entry of type :data:`REFUSED` (index -1, reason = the error) records a refused op
    history: list[list[Any]] = field(default_factory=list)

    @property
    def key(self) -> PriorityKey:
        return priority_key(self.tier_score, self.sequence)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (camelCase) form used for storage, results and views."""
        return {
            "reservationId": self.reservation_id,
            "orderId": self.order_id,
            "itemIndex": self.item_index,
            "customerId": self.customer_id,
            "customerEmail": self.customer_email,
            "sku": self.sku,
            "location": self.location,
            "shipDate": self.ship_date.isoformat(),
            "quantity": self.quantity,
            "tier": self.tier,
            "tierScore": self.tier_score,
            "status": str(self.status),
            "committed": self.committed,
            "sequence": self.sequence,
            "queuePosition": self.queue_position,
            "expiresAt": iso(self.expires_at),
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "reason": self.reason,
            "available": self.available,
            "productName": self.product_name,
            "source": self.source,
            "category": self.category,
            "confirmedAt": None if self.confirmed_at is None else iso(self.confirmed_at),
            "stockSettled": self.settled,
        }

    def to_stored(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the event history: what the table stores."""
        data = self.to_dict()
        data["history"] = self.history
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reservation:
        created = parse_iso(str(data["createdAt"]))
        return cls(
            reservation_id=str(data["reservationId"]),
            order_id=str(data["orderId"]),
            item_index=int(data.get("itemIndex", 0)),
            customer_id=str(data["customerId"]),
            customer_email=str(data.get("customerEmail") or ""),
            sku=str(data["sku"]),
            location=str(data["location"]),
            ship_date=date.fromisoformat(str(data["shipDate"])),
            quantity=int(data["quantity"]),
            tier=str(data["tier"]),
            tier_score=int(data["tierScore"]),
            sequence=int(data["sequence"]),
            status=Status(data["status"]),
            expires_at=parse_iso(str(data["expiresAt"])),
            created_at=created,
            updated_at=parse_iso(str(data.get("updatedAt") or data["createdAt"])),
            committed=bool(data.get("committed", False)),
            queue_position=None
            if data.get("queuePosition") is None
            else int(data["queuePosition"]),
            reason=None if data.get("reason") is None else str(data["reason"]),
            available=None if data.get("available") is None else int(data["available"]),
            product_name=str(data.get("productName") or ""),
            source=str(data.get("source") or ""),
            category=None if data.get("category") is None else str(data["category"]),
            history=[list(entry) for entry in data.get("history") or ()],
            confirmed_at=None if not data.get("confirmedAt") else parse_iso(str(data["confirmedAt"])),
            # stored before holds were kept: a CONFIRMED one without the field is settled
            settled=bool(data.get("stockSettled", "confirmedAt" not in data)),
        )

    def holds(self, status: Status | None = None) -> bool:
        """Whether its units count against supply (in ``status``, default its own)."""
        status = self.status if status is None else status
        return status in HOLDING or (status is Status.CONFIRMED and not self.settled)


#: the index in the id of a CONFIRMED event: one per reservation and run, whatever its place
CONFIRMED_INDEX = "confirmed"


def event_id(reservation_id: str, cause: str, index: int | str) -> str:
    """Deterministic id of the ``index``-th event caused by ``cause`` (the same on every
    replay of that cause)."""
    digest = hashlib.sha256(f"{reservation_id}|{cause}|{index}".encode()).hexdigest()[:20]
    return f"E-{digest}"


def reservation_event(
    reservation: Reservation,
    event_type: EventType,
    now: datetime | str,
    queue_position: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One ``reservation-events`` value (``queuePosition``/``reason`` only when known).

    ``now`` may be given pre-formatted (``iso(now)``)."""
    event: dict[str, Any] = {
        "eventType": str(event_type),
        "reservationId": reservation.reservation_id,
        "orderId": reservation.order_id,
        "customerId": reservation.customer_id,
        "sku": reservation.sku,
        "location": reservation.location,
        "shipDate": reservation.ship_date.isoformat(),
        "quantity": reservation.quantity,
        "tier": reservation.tier,
        "sequence": reservation.sequence,
    }
    if queue_position is not None:
        event["queuePosition"] = queue_position
    if reason is not None:
        event["reason"] = reason
    if event_type is EventType.REJECTED and reservation.available is not None:
        event["available"] = reservation.available
    event["at"] = now if isinstance(now, str) else iso(now)
    return event


#: history entries kept per reservation (a replay only concerns its latest causes)
HISTORY_KEPT = 8

#: the type of a history entry that records a refused op (no event; ``reason`` = error)
REFUSED = "REFUSED"

#: refusals kept per reservation besides its events (each command input a replay may see)
REFUSALS_KEPT = 8

#: the status an event leaves its reservation in (re-applying a lost write; consumers)
STATUS_AFTER = {
    EventType.RESERVED: Status.RESERVED,
    EventType.PROMOTED: Status.RESERVED,
    EventType.WAITLISTED: Status.WAITLISTED,
    EventType.BUMPED: Status.WAITLISTED,
    EventType.REJECTED: Status.REJECTED,
    EventType.CANCELLED: Status.CANCELLED,
    EventType.EXPIRED: Status.EXPIRED,
    EventType.CONFIRMED: Status.CONFIRMED,
}


@dataclass
class Outcome:
    """What one book operation did.

    ``reservation``: the subject (the decision of ``place``; the reservation cancelled or
    committed), ``changed``: every reservation whose stored state changed (each once),
    ``events``: ``reservation-events`` values in causal order, ``duplicate``: ``place`` of
    an id the book already holds (nothing changed), ``error``: why nothing was done
    (``not_found``, ``not_cancellable``, ``not_reserved``, ``commit_deadline_passed``,
    ``not_pending``), ``header_changed``: the book header must be rewritten.
    """

    reservation: Reservation | None = None
    changed: list[Reservation] = field(default_factory=list)
    #: unchanged reservations of a replayed cause, to write again: after a kill -9 local
    #: state may hold them while the changelog does not (stream_app.local_state)
    rewrite: list[Reservation] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicate: bool = False
    error: str | None = None
    header_changed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change applied by :meth:`ReservationBook.apply_transitions`."""

    reservation_id: str
    status: Status
    reason: str | None = None
    event: EventType | None = None


def newest_versions(reservations: Iterable[Reservation]) -> list[Reservation]:
    """One version per reservation id and per queue place (ship date, sequence): the
    newest (``updated_at``, then the longer history). Two versions exist when an old owner
    of a partition wrote it while the new owner recovered it; the book must still load."""
    def newer(a: Reservation, b: Reservation) -> bool:
        return (a.updated_at, len(a.history)) > (b.updated_at, len(b.history))

    by_id: dict[str, Reservation] = {}
    for reservation in reservations:
        known = by_id.get(reservation.reservation_id)
        if known is None or newer(reservation, known):
            by_id[reservation.reservation_id] = reservation
    by_place: dict[tuple[date, int], Reservation] = {}
    for reservation in by_id.values():
        place = (reservation.ship_date, reservation.sequence)
        known = by_place.get(place)
        if known is None or newer(reservation, known):
            by_place[place] = reservation
    return list(by_place.values())
