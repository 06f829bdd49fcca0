"""The reservation book: every reservation of ONE SKU/location, and its operations.

One book is one partition's unit of decision. It is a mutable object: every operation
changes the book in place and returns an :class:`Outcome` naming the reservations whose
stored state changed (``changed``: write only those) and the ``reservation-events`` dicts
to publish. Nothing here reads the clock or does I/O: ``now`` is always an argument.

The reservation itself, its statuses and events are in :mod:`.model`, ids and time in
:mod:`.ids`, the ranked lists in :mod:`.ranking`. The book stays one module (about 850
lines): it is one class whose invariants (held totals, ranks, the order index) every
operation keeps together.

Cost: ``place`` is O(log n + tiers + ship dates); running held totals per ship date keep
future ATP at O(dates); ranks come from per-tier sorted lists of sequences (arrivals
append at the end). Bulk changes (mass promotion, expiry, release) rebuild the ranked
lists of the touched queue once, O(queue).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

from stream_app.domain.future_atp import Supply, future_atp
from stream_app.domain.ids import (
    expires_at_for,
    iso,
    parse_iso,
    require_aware,
    reservation_id,
)
from stream_app.domain.model import (
    CONFIRMED_INDEX,
    COUNTED,
    FINAL,
    HISTORY_KEPT,
    HOLDING,
    REFUSALS_KEPT,
    REFUSED,
    STATUS_AFTER,
    EventType,
    Outcome,
    Reason,
    Reservation,
    Status,
    Transition,
    event_id,
    newest_versions,
    reservation_event,
)
from stream_app.domain.preorders import ItemRequest, Policy
from stream_app.domain.priority import tier_score
from stream_app.domain.ranking import BULK, POSITIONED, Queue, Recorder

_CONFIRMED = str(EventType.CONFIRMED)


class ReservationBook:
    """All reservations of one SKU/location (all ship dates). Mutated in place."""

    def __init__(self, sku: str, location: str) -> None:
        self.sku = sku
        self.location = location
        self._by_id: dict[str, Reservation] = {}
        self._by_order: dict[str, list[str]] = {}
        self._queues: dict[date, Queue] = {}
        self._held: dict[date, int] = {}
        self._customer_units: dict[str, int] = {}
        self._revision = 0  # bumped whenever header content changes
        #: cause → ids of the reservations with recorded events of it (ordered set)
        self._caused: dict[str, dict[str, None]] = {}
        #: cause → the index its next recorded event gets (O(1) for causes many ops share)
        self._cause_next: dict[str, int] = {}
        #: CONFIRMED reservations whose units are still held (stock not yet reflecting them)
        self._unsettled: dict[str, Reservation] = {}

    # --- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, reservation_id: object) -> bool:
        return reservation_id in self._by_id

    def get(self, reservation_id: str) -> Reservation | None:
        return self._by_id.get(reservation_id)

    def reservations(self) -> Iterator[Reservation]:
        """Every reservation, by ship date then sequence."""
        for ship_date in self.ship_dates():
            queue = self._queues[ship_date]
            for sequence in sorted(queue.by_seq):
                yield queue.by_seq[sequence]

    def reservations_for(self, ship_date: date) -> list[Reservation]:
        queue = self._queues.get(ship_date)
        if queue is None:
            return []
        return [queue.by_seq[sequence] for sequence in sorted(queue.by_seq)]

    def order_reservations(self, order_id: str) -> list[Reservation]:
        found = (self._by_id[rid] for rid in self._by_order.get(order_id, ()))
        return sorted(found, key=lambda r: (r.ship_date, r.sequence))

    def ship_dates(self) -> list[date]:
        return sorted(self._queues)

    def held_by_date(self) -> Mapping[date, int]:
        """Units held (RESERVED, CONFIRMING, RELEASE_FAILED) per ship date; read-only view."""
        return MappingProxyType(self._held)

    def held_units(self) -> int:
        """Units held by active reservations: what the storefront must not sell."""
        return sum(self._held.values())

    def customer_units(self, customer_id: str) -> int:
        return self._customer_units.get(customer_id, 0)

    def future_atp(self, supply: Supply, ship_date: date) -> int:
        return future_atp(supply, self._held, ship_date)

    def queue_depth(self, ship_date: date) -> int:
        queue = self._queues.get(ship_date)
        return queue.depth if queue else 0

    def queue_position(self, reservation: Reservation | str) -> int | None:
        """Live 1-based rank in its queue (None unless RESERVED or WAITLISTED). O(log n)."""
        found = self._by_id.get(reservation) if isinstance(reservation, str) else reservation
        if found is None:
            return None
        queue = self._queues.get(found.ship_date)
        return queue.position(found) if queue else None

    def reservation_dict(self, reservation: Reservation) -> dict[str, Any]:
        """:meth:`Reservation.to_dict` with the live queue position."""
        data = reservation.to_dict()
        data["queuePosition"] = self.queue_position(reservation)
        return data

    def queue(
        self, ship_date: date, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Queue entries in rank order (RESERVED then WAITLISTED, each by priority key),
        ``queuePosition`` = offset+1 … ; ``offset``/``limit`` page through long queues."""
        queue = self._queues.get(ship_date)
        if queue is None:
            return []
        entries: list[dict[str, Any]] = []
        position = 0
        end = None if limit is None else offset + limit
        for ranked in (queue.reserved, queue.waitlisted):
            if position + len(ranked) <= offset:
                position += len(ranked)
                continue
            for _score, sequence in ranked.in_order():
                position += 1
                if position <= offset:
                    continue
                if end is not None and position > end:
                    return entries
                data = queue.by_seq[sequence].to_dict()
                data["queuePosition"] = position
                entries.append(data)
        return entries

    def queue_view(
        self, ship_date: date, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /queues/{sku}/{location}/{shipDate}``."""
        return {
            "sku": self.sku,
            "location": self.location,
            "shipDate": ship_date.isoformat(),
            "depth": self.queue_depth(ship_date),
            "entries": self.queue(ship_date, offset, limit),
        }

    # --- storage ---------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        """Small JSON-safe header (O(ship dates)). Everything in it can be derived from
        the reservations; ``lastSequence`` keeps sequences monotonic even if the highest
        reservations of a date were lost."""
        return {
            "sku": self.sku,
            "location": self.location,
            "lastSequence": {
                d.isoformat(): q.last_sequence for d, q in sorted(self._queues.items())
            },
            "heldByDate": {d.isoformat(): units for d, units in sorted(self._held.items())},
            "heldUnits": self.held_units(),
            "reservations": len(self._by_id),
        }

    @classmethod
    def restore(
        cls,
        sku: str,
        location: str,
        reservations: Iterable[Reservation | Mapping[str, Any]],
        header: Mapping[str, Any] | None = None,
    ) -> ReservationBook:
        """Rebuild a book from its stored reservations (and header). O(n log n)."""
        book = cls(sku, location)
        loaded = newest_versions(
            r if isinstance(r, Reservation) else Reservation.from_dict(r) for r in reservations
        )
        loaded.sort(key=lambda r: (r.ship_date, r.sequence))
        for reservation in loaded:
            if reservation.sku != sku or reservation.location != location:
                raise ValueError(
                    f"reservation {reservation.reservation_id} is not of {sku}|{location}"
                )
            status = reservation.status
            reservation.status = Status.REJECTED  # no memberships yet
            book._register(reservation)
            book._move(reservation, status, reservation.updated_at, ranked=False)
        for queue in book._queues.values():
            queue.rebuild_ranked()
        for text, last in (header or {}).get("lastSequence", {}).items():
            queue = book._queue(date.fromisoformat(text))
            queue.last_sequence = max(queue.last_sequence, int(last))
        return book

    # --- retention -------------------------------------------------------------------

    def prunable(self, before: datetime) -> list[Reservation]:
        """Reservations whose story is over (a final status, units no longer held) and
        that last changed before ``before``; never the highest sequence of a queue, so a
        book rebuilt from what stays numbers new arrivals as this one does."""
        found = []
        for queue in self._queues.values():
            last = max(queue.by_seq, default=None)
            for sequence, reservation in queue.by_seq.items():
                if (
                    sequence != last
                    and reservation.status in FINAL
                    and not reservation.holds()
                    and reservation.updated_at < before
                ):
                    found.append(reservation)
        return sorted(found, key=lambda r: (r.ship_date, r.sequence))

    def forget(self, reservations: Iterable[Reservation]) -> None:
        """Drop reservations :meth:`prunable` returned: the book is then what
        :meth:`restore` builds from the others (their customer's counted units too)."""
        for reservation in reservations:
            rid = reservation.reservation_id
            if self._by_id.get(rid) is not reservation or reservation.holds():
                raise ValueError(f"reservation {rid} cannot be forgotten")
            queue = self._queues[reservation.ship_date]
            del queue.by_seq[reservation.sequence]
            del self._by_id[rid]
            order = self._by_order[reservation.order_id]
            order.remove(rid)
            if not order:
                del self._by_order[reservation.order_id]
            if reservation.status in COUNTED:
                left = self._customer_units.get(reservation.customer_id, 0) - reservation.quantity
                if left > 0:
                    self._customer_units[reservation.customer_id] = left
                else:
                    self._customer_units.pop(reservation.customer_id, None)
            for entry in reservation.history:
                holders = self._caused.get(entry[0])
                if holders is not None:
                    holders.pop(rid, None)
                    if not holders:
                        del self._caused[entry[0]]
                        self._cause_next.pop(entry[0], None)
            self._revision += 1

    # --- internals -------------------------------------------------------------------

    def _queue(self, ship_date: date) -> Queue:
        queue = self._queues.get(ship_date)
        if queue is None:
            queue = self._queues[ship_date] = Queue(ship_date)
            self._held.setdefault(ship_date, 0)
        return queue

    def _register(self, reservation: Reservation) -> None:
        queue = self._queue(reservation.ship_date)
        if reservation.sequence in queue.by_seq or reservation.reservation_id in self._by_id:
            raise ValueError(f"duplicate reservation {reservation.reservation_id}")
        queue.by_seq[reservation.sequence] = reservation
        queue.last_sequence = max(queue.last_sequence, reservation.sequence)
        if queue.min_expires_at is None or reservation.expires_at < queue.min_expires_at:
            queue.min_expires_at = reservation.expires_at
        self._by_id[reservation.reservation_id] = reservation
        self._revision += 1
        self._by_order.setdefault(reservation.order_id, []).append(reservation.reservation_id)
        self._index(reservation)

    def _move(
        self, reservation: Reservation, status: Status, now: datetime, ranked: bool = True
    ) -> None:
        """The one place a status changes: keeps ranked lists and running totals right."""
        old = reservation.status
        if old is status:
            return
        queue = self._queues[reservation.ship_date]
        if ranked:
            before = queue.ranked(old)
            if before is not None:
                before.remove(reservation.tier_score, reservation.sequence)
            after = queue.ranked(status)
            if after is not None:
                after.add(reservation.tier_score, reservation.sequence)
        units = reservation.quantity
        held_before, held_after = reservation.holds(old), reservation.holds(status)
        if held_before != held_after:
            self._revision += 1
        if held_before:
            self._held[reservation.ship_date] -= units
        if held_after:
            self._held[reservation.ship_date] += units
        if status is Status.CONFIRMED and not reservation.settled:
            self._unsettled[reservation.reservation_id] = reservation
        customer = reservation.customer_id
        if old in COUNTED:
            left = self._customer_units.get(customer, 0) - units
            if left > 0:
                self._customer_units[customer] = left
            else:
                self._customer_units.pop(customer, None)
        if status in COUNTED:
            self._customer_units[customer] = self._customer_units.get(customer, 0) + units
        reservation.status = status
        reservation.updated_at = now

    def _move_many(self, moves: Sequence[tuple[Reservation, Status]], now: datetime) -> None:
        """Apply many status changes; a queue with many of them is re-ranked once."""
        per_queue: dict[date, int] = {}
        for reservation, _status in moves:
            per_queue[reservation.ship_date] = per_queue.get(reservation.ship_date, 0) + 1
        bulk = {ship_date for ship_date, count in per_queue.items() if count > BULK}
        for reservation, status in moves:
            self._move(reservation, status, now, ranked=reservation.ship_date not in bulk)
        for ship_date in sorted(bulk):
            self._queues[ship_date].rebuild_ranked()

    def _finish(
        self,
        recorder: Recorder,
        now: datetime,
        cause: str | None = None,
        subject: Reservation | None = None,
        *,
        recorded_too: bool = True,
        **extra: Any,
    ) -> Outcome:
        """Positions, events and (with a ``cause``) their history entries.

        With a cause, every event is recorded in its reservation's history and the
        ``subject`` (the reservation whose stored presence says "this cause was applied")
        also records the op's events on the others (``effects``): a replay of the cause
        re-applies those if their write was lost, then sends every recorded event of the
        cause again (:meth:`_replay`). ``Outcome.events`` are all recorded events of the
        cause, older ones first (a re-run after a half-written first run); with
        ``recorded_too`` False only this op's (a cause many ops share: a release run)."""
        for reservation in recorder.changed.values():
            reservation.queue_position = self.queue_position(reservation)
        at = iso(now)
        entries: list[tuple[Reservation, list[Any]]] = []
        first = 0 if cause is None else self._next_index(cause)
        for index, (reservation, event_type, reason) in enumerate(recorder.pending, first):
            position = None
            if POSITIONED.get(event_type) is reservation.status:
                position = reservation.queue_position
            entries.append((reservation, [cause, index, str(event_type), position, reason, at]))
        rewrite: list[Reservation] = []
        if cause is None:
            events = [
                self._event_of(reservation, entry, f"{entry[2]}@{at}")
                for reservation, entry in entries
            ]
        else:
            if subject is not None:
                effects = [
                    [r.reservation_id, *entry[1:5]] for r, entry in entries if r is not subject
                ]
                for reservation, entry in entries:
                    if reservation is subject:
                        entry.append(effects)
                        break
            for reservation, entry in entries:
                self._append_history(reservation, entry)
            if not recorded_too:
                events = [self._event_of(r, entry, cause) for r, entry in entries]
            else:
                events = self._emission(cause)
                rewrite = [  # an earlier, half-written run of the cause (written again)
                    self._by_id[rid]
                    for rid in self._caused.get(cause, ())
                    if rid not in recorder.changed
                ]
        return Outcome(
            changed=list(recorder.changed.values()),
            rewrite=rewrite,
            events=events,
            header_changed=self._revision != recorder.revision,
            **extra,
        )

    # --- recorded causes ---------------------------------------------------------------

    def _index(self, reservation: Reservation) -> None:
        for entry in reservation.history:
            self._caused.setdefault(entry[0], {})[reservation.reservation_id] = None
            self._cause_next[entry[0]] = max(self._cause_next.get(entry[0], 0), entry[1] + 1)

    def _append_history(self, reservation: Reservation, entry: list[Any]) -> None:
        history = reservation.history
        history.append(entry)
        self._caused.setdefault(entry[0], {})[reservation.reservation_id] = None
        self._cause_next[entry[0]] = max(self._cause_next.get(entry[0], 0), entry[1] + 1)
        refused = entry[2] == REFUSED
        kept = REFUSALS_KEPT if refused else HISTORY_KEPT
        while sum(1 for e in history if (e[2] == REFUSED) == refused) > kept:
            oldest = next(i for i, e in enumerate(history) if (e[2] == REFUSED) == refused)
            dropped = history.pop(oldest)[0]
            if all(e[0] != dropped for e in history):
                holders = self._caused.get(dropped)
                if holders is not None:
                    holders.pop(reservation.reservation_id, None)
                    if not holders:
                        del self._caused[dropped]
                        self._cause_next.pop(dropped, None)

    def _refuse(self, reservation: Reservation, refusal: str, error: str, now: datetime) -> Outcome:
        """Refuse an op and record the refusal on its subject (written, no event): a
        state-dependent refusal (a commit of a WAITLISTED reservation) must give the same
        answer on a replay after a later op changed that state (a promotion). Refusals
        are kept apart from the events (the last :data:`REFUSALS_KEPT`), so refused
        retries cannot push the recorded events out of its history."""
        self._append_history(reservation, [refusal, -1, REFUSED, None, error, iso(now)])
        return Outcome(reservation=reservation, changed=[reservation], error=error)

    @staticmethod
    def _refusal(reservation: Reservation, cause: str) -> str | None:
        for entry in reservation.history:
            if entry[0] == cause and entry[2] == REFUSED:
                return str(entry[4])
        return None

    def _next_index(self, cause: str) -> int:
        return self._cause_next.get(cause, 0)

    def _event_of(self, reservation: Reservation, entry: list[Any], cause: str) -> dict[str, Any]:
        event = reservation_event(
            reservation, EventType(entry[2]), entry[5], entry[3], entry[4]
        )
        # a reservation is confirmed once per run, in whatever order Fluent's answers come
        # back: its id must not depend on that order (a resumed attempt that confirms again
        # what a lost write forgot answers in another order, and must send the same event)
        index = CONFIRMED_INDEX if entry[2] == _CONFIRMED else entry[1]
        event["eventId"] = event_id(reservation.reservation_id, cause, index)
        return event

    def _emission(self, cause: str) -> list[dict[str, Any]]:
        """Every recorded event of ``cause`` in this book, in the order it was caused."""
        found: list[tuple[int, Reservation, list[Any]]] = []
        for rid in self._caused.get(cause, ()):
            reservation = self._by_id[rid]
            found.extend(
                (e[1], reservation, e)
                for e in reservation.history
                if e[0] == cause and e[2] != REFUSED
            )
        found.sort(key=lambda item: item[0])
        return [self._event_of(r, entry, cause) for _, r, entry in found]

    def resend(self, cause: str) -> Outcome:
        """A replayed input whose effect the book already holds: the events recorded for
        ``cause`` again (same ids) and its reservations written again; no new decision."""
        return self._replay(cause, None)

    def recorded_events(self, cause: str) -> list[dict[str, Any]]:
        """The events ``cause`` caused in this book (empty when it caused none here)."""
        return self._emission(cause)

    def _replay(self, cause: str, subject: Reservation | None) -> Outcome:
        """An operation already applied: re-apply what its subject recorded of it on other
        reservations whose write was lost (a crash between two chunk writes), then send
        every recorded event of the cause again — never nothing. ``changed`` names every
        reservation of the cause, so its chunks are written again."""
        changed: list[Reservation] = []
        record = None
        if subject is not None:
            record = next(
                (e for e in subject.history if e[0] == cause and len(e) > 6), None
            )
        if record is not None:
            changed = self._redo(cause, record[6], record[5])
        for reservation in changed:
            reservation.queue_position = self.queue_position(reservation)
        # written again, redone or not: after a kill -9 local state may hold them while the
        # changelog does not (stream_app.local_state)
        redone = {r.reservation_id for r in changed}
        rewrite = [self._by_id[rid] for rid in self._caused.get(cause, ()) if rid not in redone]
        return Outcome(
            reservation=subject,
            changed=changed,
            rewrite=rewrite,
            events=self._emission(cause),
            duplicate=True,
        )

    def _redo(self, cause: str, effects: list[list[Any]], at: str) -> list[Reservation]:
        by_id: dict[str, list[list[Any]]] = {}
        for effect in effects:
            by_id.setdefault(effect[0], []).append(effect)
        when = parse_iso(at)
        changed: list[Reservation] = []
        for rid, mine in by_id.items():
            reservation = self._by_id.get(rid)
            if reservation is None:
                continue
            have = {e[1] for e in reservation.history if e[0] == cause}
            missing = [e for e in mine if e[1] not in have]
            if not missing:
                continue
            last_type = EventType(mine[-1][2])
            if last_type is EventType.COMMITTED:
                reservation.committed = True
            else:
                status = STATUS_AFTER[last_type]
                self._move(reservation, status, when)
                reservation.reason = mine[-1][4]
                if status is Status.RESERVED:
                    reservation.available = None
            reservation.updated_at = when
            for effect in missing:
                self._append_history(reservation, [cause, *effect[1:5], at])
            changed.append(reservation)
        return changed

    def _victims(self, queue: Queue, score: int, needed: int) -> list[Reservation]:
        """Lowest-priority, latest-arriving RESERVED items of LOWER tiers freeing ≥ needed."""
        victims: list[Reservation] = []
        freed = 0
        for other_score, sequence in queue.reserved.in_reverse():
            if other_score >= score:
                break
            victim = queue.by_seq[sequence]
            victims.append(victim)
            freed += victim.quantity
            if freed >= needed:
                return victims
        return []

    def _promote(self, supply: Supply, policy: Policy, now: datetime, recorder: Recorder) -> None:
        """Waitlisted → RESERVED, earliest ship date first, each queue in priority order
        while the head fits (a large head item is not overtaken by later small ones).
        With commits required, a queue past its commit deadline is not promoted: nobody
        could commit in time; its waitlist is cancelled at release."""
        for ship_date in self.ship_dates():
            queue = self._queues[ship_date]
            if not len(queue.waitlisted):
                continue
            if policy.commit_required and now >= expires_at_for(ship_date, policy.expiry_days):
                continue
            atp = self.future_atp(supply, ship_date)
            promoted: list[tuple[Reservation, Status]] = []
            for _score, sequence in queue.waitlisted.in_order():
                candidate = queue.by_seq[sequence]
                if candidate.quantity > atp:
                    break
                atp -= candidate.quantity
                promoted.append((candidate, Status.RESERVED))
            if promoted:
                self._move_many(promoted, now)
                for reservation, _status in promoted:
                    reservation.reason = None
                    reservation.available = None
                    recorder.event(reservation, EventType.PROMOTED)

    # --- operations ------------------------------------------------------------------

    def place(
        self,
        request: ItemRequest,
        supply: Supply,
        policy: Policy,
        now: datetime,
        cause: str | None = None,
    ) -> Outcome:
        """Decide one item: RESERVED, WAITLISTED or REJECTED (``Outcome.reservation``).

        In order: ``max_per_customer`` (units of this SKU/location held or waitlisted by
        the customer) → REJECTED ``max_per_customer``; future ATP(shipDate) ≥ quantity →
        RESERVED; else, with preemption and the waitlist on, the lowest-priority,
        latest-arriving RESERVED items of strictly LOWER tiers in the same ship-date queue
        are BUMPED (then WAITLISTED) if together they free enough, and the item is
        RESERVED; else WAITLISTED (waitlist on and queue depth RESERVED+WAITLISTED below
        ``max_queue_depth``) or REJECTED (``queue_full`` / ``insufficient_inventory``,
        ``available`` = max(0, ATP)). A RESERVED item is never refused for depth: the
        cap bounds the waitlist, supply bounds the rest.

        Idempotent: an id already in the book returns its current state with
        ``duplicate=True`` and no change, and its recorded events again (the decision,
        bumps and promotions it caused; ``cause`` defaults to the reservation id).
        """
        require_aware(now)
        if request.sku != self.sku or request.location != self.location:
            raise ValueError(f"item {request.sku}|{request.location} is not of this book")
        rid = reservation_id(
            request.order_id, request.sku, request.location, request.item_index, policy.id_secret
        )
        cause = cause or rid
        existing = self._by_id.get(rid)
        if existing is not None:
            return self._replay(cause, existing)
        queue = self._queue(request.ship_date)
        score = tier_score(request.tier, policy.tier_scores)
        reservation = Reservation(
            reservation_id=rid,
            order_id=request.order_id,
            item_index=request.item_index,
            customer_id=request.customer_id,
            customer_email=request.customer_email,
            sku=request.sku,
            location=request.location,
            ship_date=request.ship_date,
            quantity=request.quantity,
            tier=request.tier,
            tier_score=score,
            sequence=queue.last_sequence + 1,
            status=Status.REJECTED,
            expires_at=expires_at_for(request.ship_date, policy.expiry_days),
            created_at=now,
            updated_at=now,
            product_name=request.product_name,
            source=request.source,
            category=request.category,
        )
        recorder = Recorder(self._revision)
        self._register(reservation)
        quantity = request.quantity
        limit = policy.max_per_customer
        if quantity <= 0:
            reservation.reason = "invalid_quantity"
            recorder.event(reservation, EventType.REJECTED, reservation.reason)
            return self._finish(recorder, now, cause, reservation, reservation=reservation)
        if limit is not None and self.customer_units(request.customer_id) + quantity > limit:
            reservation.reason = Reason.MAX_PER_CUSTOMER
            recorder.event(reservation, EventType.REJECTED, reservation.reason)
            return self._finish(recorder, now, cause, reservation, reservation=reservation)
        atp = self.future_atp(supply, request.ship_date)
        if atp >= quantity:
            self._move(reservation, Status.RESERVED, now)
            recorder.event(reservation, EventType.RESERVED)
            return self._finish(recorder, now, cause, reservation, reservation=reservation)
        victims: list[Reservation] = []
        if policy.priority_preemption and policy.waitlist_enabled:
            victims = self._victims(queue, score, quantity - atp)
        if victims:
            for victim in victims:
                self._move(victim, Status.WAITLISTED, now)
                victim.reason = Reason.PREEMPTED
                recorder.event(victim, EventType.BUMPED, Reason.PREEMPTED)
                recorder.event(victim, EventType.WAITLISTED, Reason.PREEMPTED)
            self._move(reservation, Status.RESERVED, now)
            recorder.event(reservation, EventType.RESERVED)
            self._promote(supply, policy, now, recorder)  # bumping may free a little more
            return self._finish(recorder, now, cause, reservation, reservation=reservation)
        reservation.available = max(0, atp)
        if policy.waitlist_enabled and queue.depth < policy.max_queue_depth:
            reservation.reason = Reason.INSUFFICIENT_INVENTORY
            self._move(reservation, Status.WAITLISTED, now)
            recorder.event(reservation, EventType.WAITLISTED, reservation.reason)
        else:
            reservation.reason = (
                Reason.QUEUE_FULL if policy.waitlist_enabled else Reason.INSUFFICIENT_INVENTORY
            )
            recorder.event(reservation, EventType.REJECTED, reservation.reason)
        return self._finish(recorder, now, cause, reservation, reservation=reservation)

    def cancel(
        self,
        reservation_id: str,
        supply: Supply,
        policy: Policy,
        now: datetime,
        reason: str = Reason.CANCELLED,
        cause: str | None = None,
    ) -> Outcome:
        """Cancel a RESERVED or WAITLISTED reservation, then promote the waitlist.

        Already CANCELLED/EXPIRED/REJECTED: no change (idempotent), the recorded events
        of ``cause`` (default ``cancel:<id>``) again. CONFIRMING, RELEASE_FAILED,
        CONFIRMED: ``error="not_cancellable"`` (the release owns it).
        """
        require_aware(now)
        cause = cause or f"cancel:{reservation_id}"
        reservation = self._by_id.get(reservation_id)
        if reservation is None:
            return Outcome(error="not_found")
        if reservation.status in (Status.CANCELLED, Status.EXPIRED, Status.REJECTED):
            return self._replay(cause, reservation)
        if reservation.status not in (Status.RESERVED, Status.WAITLISTED):
            return Outcome(reservation=reservation, error="not_cancellable")
        recorder = Recorder(self._revision)
        self._move(reservation, Status.CANCELLED, now)
        reservation.reason = reason
        recorder.event(reservation, EventType.CANCELLED, reason)
        # freed units, or a waitlisted head gone: whoever is next may fit now
        self._promote(supply, policy, now, recorder)
        return self._finish(recorder, now, cause, reservation, reservation=reservation)

    def cancel_order(
        self,
        order_id: str,
        supply: Supply,
        policy: Policy,
        now: datetime,
        reason: str = Reason.CANCELLED,
        cause: str | None = None,
    ) -> Outcome:
        """Cancel every RESERVED/WAITLISTED reservation of ``order_id`` in this book, then
        promote once. ``error="not_found"`` when the book holds none of the order; none
        left to cancel: the recorded events of ``cause`` (``cancel-order:<orderId>``)."""
        require_aware(now)
        cause = cause or f"cancel-order:{order_id}"
        mine = self.order_reservations(order_id)
        if not mine:
            return Outcome(error="not_found")
        recorder = Recorder(self._revision)
        targets = [r for r in mine if r.status in (Status.RESERVED, Status.WAITLISTED)]
        if not targets:
            subject = next((r for r in mine if any(
                e[0] == cause and len(e) > 6 for e in r.history)), None)
            return self._replay(cause, subject)
        self._move_many([(r, Status.CANCELLED) for r in targets], now)
        for reservation in targets:
            reservation.reason = reason
            recorder.event(reservation, EventType.CANCELLED, reason)
        self._promote(supply, policy, now, recorder)
        return self._finish(recorder, now, cause, targets[0])

    def commit(
        self,
        reservation_id: str,
        policy: Policy,
        now: datetime,
        cause: str | None = None,
        attempt: str | None = None,
    ) -> Outcome:
        """Mark a reservation committed (payment captured): COMMITTED event; idempotent.

        Only a reservation holding units can be committed (``error="not_reserved"``);
        with commits required a RESERVED one must be committed before ``expiresAt``
        (``error="commit_deadline_passed"``, nothing changes; expiry follows).

        ``attempt`` names this command's input (its topic, partition and offset): a
        refusal is then recorded on the reservation, so a replay of the same input is
        refused again even when a later input has since made the reservation committable
        (a WAITLISTED one promoted). Another attempt is judged on the state it finds.
        """
        require_aware(now)
        cause = cause or f"commit:{reservation_id}"
        reservation = self._by_id.get(reservation_id)
        if reservation is None:
            return Outcome(error="not_found")
        if reservation.committed:
            return self._replay(cause, reservation)
        refusal = None if attempt is None else f"{cause}@{attempt}"
        refused = None if refusal is None else self._refusal(reservation, refusal)
        if refused is not None:  # refused the first time: the same answer on a replay
            return Outcome(reservation=reservation, rewrite=[reservation], error=refused,
                           duplicate=True)
        error = None
        if reservation.status not in HOLDING and reservation.status is not Status.CONFIRMED:
            error = "not_reserved"
        elif (
            policy.commit_required
            and reservation.status is Status.RESERVED
            and now >= reservation.expires_at
        ):
            error = "commit_deadline_passed"
        if error is not None:
            if refusal is None:
                return Outcome(reservation=reservation, error=error)
            return self._refuse(reservation, refusal, error, now)
        recorder = Recorder(self._revision)
        reservation.committed = True
        reservation.updated_at = now
        recorder.event(reservation, EventType.COMMITTED)
        return self._finish(recorder, now, cause, reservation, reservation=reservation)

    def promote(
        self, supply: Supply, policy: Policy, now: datetime, cause: str | None = None
    ) -> Outcome:
        """Promote waitlisted items that new supply (or freed units) now covers. With a
        ``cause`` (the supply change) the promotions are recorded, and the events are
        every recorded promotion of that cause (a replay sends them again)."""
        require_aware(now)
        recorder = Recorder(self._revision)
        self._promote(supply, policy, now, recorder)
        return self._finish(recorder, now, cause)

    def expire(
        self, supply: Supply, policy: Policy, now: datetime, cause: str | None = None
    ) -> Outcome:
        """With commits required: RESERVED, uncommitted reservations whose ``expiresAt``
        has come (``now ≥ expiresAt``) → EXPIRED (``not_committed``), then promotion."""
        require_aware(now)
        recorder = Recorder(self._revision)
        if not policy.commit_required:
            return self._finish(recorder, now, cause, recorded_too=False)
        moves: list[tuple[Reservation, Status]] = []
        for ship_date in self.ship_dates():
            queue = self._queues[ship_date]
            if (
                queue.min_expires_at is None
                or now < queue.min_expires_at
                or not len(queue.reserved)
            ):
                continue
            for _score, sequence in queue.reserved.in_order():
                candidate = queue.by_seq[sequence]
                if not candidate.committed and now >= candidate.expires_at:
                    moves.append((candidate, Status.EXPIRED))
        if moves:
            self._move_many(moves, now)
            for reservation, _status in moves:
                reservation.reason = Reason.NOT_COMMITTED
                recorder.event(reservation, EventType.EXPIRED, Reason.NOT_COMMITTED)
            self._promote(supply, policy, now, recorder)
        return self._finish(recorder, now, cause, recorded_too=False)

    def unsettled_units(self) -> int:
        """Units of CONFIRMED reservations still held (their orders not yet in the stock)."""
        return sum(r.quantity for r in self._unsettled.values())

    def settle(
        self, stock_as_of: datetime | None, held_until: datetime, now: datetime
    ) -> Outcome:
        """Release the units of CONFIRMED reservations whose order the stock now reflects:
        the channels reported stock newer than the confirmation (``stock_as_of``), or the
        confirmation is older than ``held_until`` (a grace period for feeds that never
        report). ``changed``: the settled reservations (no events)."""
        require_aware(now)
        settled: list[Reservation] = []
        for reservation in list(self._unsettled.values()):
            at = reservation.confirmed_at or now
            if (stock_as_of is not None and stock_as_of > at) or at <= held_until:
                del self._unsettled[reservation.reservation_id]
                reservation.settled = True
                self._held[reservation.ship_date] -= reservation.quantity
                self._revision += 1
                settled.append(reservation)
        return Outcome(changed=settled)

    def apply_transitions(
        self,
        transitions: Sequence[Transition],
        now: datetime,
        cause: str | None = None,
        *,
        event_at: datetime | None = None,
    ) -> Outcome:
        """Apply status changes decided elsewhere (the release); unknown ids and no-op
        transitions are skipped. Events are emitted in the given order; with a ``cause``
        (the release run) they are recorded, so a resumed run re-sends them, same ids.
        ``event_at``: the events' moment when it is not ``now``."""
        require_aware(now)
        recorder = Recorder(self._revision)
        moves: list[tuple[Reservation, Status]] = []
        applied: list[tuple[Reservation, Transition]] = []
        for transition in transitions:
            reservation = self._by_id.get(transition.reservation_id)
            if reservation is None:
                continue
            if reservation.status is transition.status and reservation.reason == transition.reason:
                continue
            if transition.status is Status.CONFIRMED and reservation.status is not Status.CONFIRMED:
                reservation.confirmed_at, reservation.settled = now, False
            moves.append((reservation, transition.status))
            applied.append((reservation, transition))
        self._move_many(moves, now)
        for reservation, transition in applied:
            reservation.reason = transition.reason
            reservation.updated_at = now
            if transition.event is None:
                recorder.touch(reservation)
            else:
                recorder.event(reservation, transition.event, transition.reason)
        return self._finish(recorder, event_at or now, cause, recorded_too=False)
