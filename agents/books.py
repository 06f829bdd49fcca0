"""The reservation books of a partition as the pre-order flow uses them: the glue between
book operations (:mod:`stream_app.domain.book`), the ``reservations`` table, the
``reservation-events`` and the order results.

An operation runs on the cached book of its SKU/location, records what it changed as a
step in the event's :class:`Outbox`, and :meth:`Books.save` writes the steps in an order a
crash cannot make inconsistent; :meth:`Outbox.flush` sends the messages only once the
writes are on the broker. Used by :mod:`agents.preorders` (intake, items, commands,
promotion) and :mod:`agents.release`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import faust
import orjson

from agents.internal import (
    PREORDER_DECISIONS,
    dead_letter_message,
)
from stream_app.broker.delivery import Message, deliver, flush_writes
from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply, overbooking_rate_for
from stream_app.domain.ids import key_of_reservation_id, parse_iso
from stream_app.domain.inventory import aggregate, expected_arrivals, stock_as_of
from stream_app.domain.model import Outcome, Reservation
from stream_app.domain.preorders import (
    ItemRequest,
    Policy,
    bump_exposure,
    pre_order_result,
)
from stream_app.partitioning import partition_for
from stream_app.records import inventory_key
from tables.reservations import (
    PartitionBooks,
    ReservationStore,
    Step,
    stored_step,
)

if TYPE_CHECKING:
    from stream_app.app import Runtime
    from stream_app.metrics import Metrics

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: items per internal message (keeps messages well under the broker's size limit)
ITEMS_PER_MESSAGE = 2000


def supply_for(runtime: Runtime, key: str, sku: str, category: str | None) -> Supply:
    """Current ATP and expected arrivals of ``key`` from the inventory table."""
    settings = runtime.settings
    state = runtime.inventory.get(key)
    rate = overbooking_rate_for(
        sku, category, settings.overbooking_rates, settings.overbooking_rate
    )
    if state is None:
        return Supply(0, (), rate, settings.expected_supply_factor)
    atp = aggregate(state, runtime.buffers, settings.oversell_protection).atp
    return Supply.from_expected(
        atp, expected_arrivals(state), rate, settings.expected_supply_factor
    )


def note_settled(metrics: Metrics, outcome: Outcome, reason: str) -> int:
    """Count the units a :meth:`ReservationBook.settle` stopped holding; returns them."""
    units = sum(r.quantity for r in outcome.changed)
    if units:
        metrics.confirmed_holds_released.labels(reason).inc(units)
    return units


def operation_step(outcome: Outcome) -> list[tuple[Reservation, bytes]]:
    """The reservations an operation wrote, its subject first, each once, serialized as
    they are now (tables.reservations.plan_writes)."""
    found: dict[str, Reservation] = {}
    written = (*outcome.changed, *outcome.rewrite)
    subject = outcome.reservation
    if subject is not None and any(r is subject for r in written):
        found[subject.reservation_id] = subject
    for reservation in written:
        found.setdefault(reservation.reservation_id, reservation)
    return stored_step(found.values())


@dataclass
class Outbox:
    """What one event (or group) causes: reservation writes, then messages.

    :meth:`flush` (through :meth:`Books.flush`) writes nothing itself: the writes were made
    by :meth:`Books.save`; it waits until the broker has them (:func:`flush_writes`), then
    sends the messages and waits for each (:func:`deliver`, retrying). The agent returns
    only then, so Faust acknowledges the source event only when everything it caused is
    on the broker, and no message announces state the changelog may not keep. The order
    results go to requests waiting in-process (``POST /pre-orders``) between the two: once
    the writes they describe are on the broker, one round trip before their messages (a
    crash from there replays the event, which finds the decisions kept and sends the
    same results).
    """

    messages: list[Message] = field(default_factory=list)
    #: what each operation of this event changed, in order (subject first), saved at its
    #: end in an order a crash cannot make inconsistent (tables.reservations.plan_writes)
    steps: list[Step] = field(default_factory=list)
    #: order results among the messages (also handed to in-process waiters)
    results: list[tuple[str, Json]] = field(default_factory=list)
    #: table writes were made: wait until they are on the broker before any message
    wrote: bool = False
    #: the stream this outbox belongs to, for stall reports (stream_app.broker.delivery.source_of)
    source: str | None = None

    def add_result(self, topic: faust.TopicT, order_id: str, result: Json) -> None:
        self.add(topic, order_id.encode(), result, None)
        self.results.append((order_id, result))

    def add(
        self, topic: faust.TopicT, key: bytes | None, value: Any, partition: int | None
    ) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        self.messages.append((topic.get_topic_name(), key, raw, partition, None))

    def add_dead_letter(self, dlq: faust.TopicT, event: faust.EventT, reason: str) -> None:
        self.messages.append(dead_letter_message(dlq, event, reason))

    async def flush(
        self, app: faust.App, answer: Callable[[str, Json], None] | None = None
    ) -> None:
        """Wait until the writes are on the broker, hand the results to ``answer``, then
        deliver the messages."""
        results, self.results = self.results, []
        if self.wrote or (results and answer is not None):
            # a result without a write of its own (a resent order) may describe another
            # agent's write that is still on its way: every write queued so far counts
            await flush_writes(app, self.source)
            self.wrote = False
        if answer is not None:
            for order_id, result in results:
                answer(order_id, result)
        messages, self.messages = self.messages, []
        await deliver(app, messages, source=self.source)


class Books:
    """The glue between book operations and the table, events and decisions."""

    def __init__(self, runtime: Runtime, store: ReservationStore, policy: Policy) -> None:
        self.runtime = runtime
        self.store = store
        self.policy = policy
        names = runtime.names
        self.events_topic = runtime.topic(names.reservation_events)
        self.results_topic = runtime.topic(names.pre_order_results)
        self.internal_topic = runtime.topic(names.internal)
        self.partitions = runtime.settings.partitions
        #: called with (orderId, result) for every order result this worker publishes
        self.on_result: Callable[[str, Json], None] | None = None
        #: called with the seconds from a pre-order's arrival to its decision
        self.on_lag: Callable[[float], None] | None = None
        #: key → (category, supply): reading the inventory table costs more than a decision
        self._supplies: dict[str, tuple[str | None, Supply]] = {}
        self._supply_generation = -1

    def supply(self, part: PartitionBooks, key: str, book: ReservationBook) -> Supply:
        """The key's supply, cached until its inventory changes (:meth:`promote` is told
        of every change by the inventory agent) or the partitions move."""
        generation = self.runtime.app.rebalancing_count
        if generation != self._supply_generation:
            self._supplies.clear()
            self._supply_generation = generation
        category = part.categories.get(key)
        cached = self._supplies.get(key)
        if cached is not None and cached[0] == category:
            return cached[1]
        supply = supply_for(self.runtime, key, book.sku, category)
        self._supplies[key] = (category, supply)
        return supply

    def record(self, key: str, partition: int, outcome: Outcome, out: Outbox) -> None:
        """Note what an operation changed and queue its events (in causal order)."""
        step = operation_step(outcome)
        if step:
            out.steps.append(step)
        for event in outcome.events:
            out.add(self.events_topic, key.encode(), event, partition)

    async def flush(self, out: Outbox) -> None:
        """Wait until the broker has the event's writes, hand its order results to the
        requests of this worker waiting for them (``POST /pre-orders``), then deliver its
        messages (:meth:`Outbox.flush`)."""
        await out.flush(self.runtime.app, self.on_result)

    def save(self, out: Outbox) -> None:
        """Write the reservations the event changed (each touched chunk once), before
        any of its messages is sent."""
        if out.steps:
            self.store.save(out.steps)
            out.steps.clear()
            out.wrote = True

    def note_decision(self, reservation: Reservation | None, arrived: datetime) -> None:
        if reservation is None:
            return
        metrics = self.runtime.metrics
        metrics.decisions.labels(str(reservation.status), reservation.tier).inc()
        waited = (datetime.now(UTC) - arrived).total_seconds()
        if 0 <= waited < 3600:  # a replay of an old input is not a decision's latency
            metrics.decision_seconds.observe(waited)
            if self.on_lag is not None:
                self.on_lag(waited)

    def decide(
        self, partition: int, items: Iterable[Json], out: Outbox, received: datetime
    ) -> int:
        """Place every item of one ``preorder-items`` message; returns the count.

        An item is decided at the moment its pre-order arrived (``at``, set at intake from
        the pre-order's message timestamp; ``received`` for items without it), so a replay
        decides as the first run did whenever it runs."""
        part = self.store.books(partition)
        decided: list[tuple[ItemRequest, int, str, ReservationBook, Any]] = []
        for wire in items:
            try:
                request = ItemRequest.from_dict(wire)
                count = int(wire.get("itemCount", 1))
                submission = str(wire.get("submission", ""))
                now = parse_iso(str(wire["at"])) if wire.get("at") else received
            except Exception:
                log.exception("bad item on the pre-order item topic")
                continue
            key = inventory_key(request.sku, request.location)
            book = part.book(key)
            if request.category is not None and part.categories.get(key) != request.category:
                part.categories[key] = request.category
            supply = self.supply(part, key, book)
            try:
                outcome = book.place(request, supply, self.policy, now)
            except Exception:  # one bad item must not cost the others their decision
                log.exception(
                    "could not decide item %d of order %s", request.item_index, request.order_id
                )
                continue
            if not outcome.duplicate:
                part.note_order(request.order_id, key)
                self.note_decision(outcome.reservation, now)
            self.record(key, partition, outcome, out)
            decided.append((request, count, submission, book, outcome.reservation))
        by_partition: dict[int, list[Json]] = defaultdict(list)
        for request, count, submission, book, reservation in decided:
            decision = book.reservation_dict(reservation)
            decision["itemIndex"] = request.item_index
            decision.update(bump_exposure(request.tier, decision["status"], self.policy))
            if count <= 1:
                # a single-item order is complete here: publish now, no collector hop and
                # no order_results write (GET /pre-orders finds it through the books'
                # order index, see tables.reservations.ReservationStore.order_reservations)
                out.add_result(
                    self.results_topic,
                    request.order_id,
                    pre_order_result(request.order_id, [decision]),
                )
                continue
            by_partition[partition_for(request.order_id, self.partitions)].append(
                {
                    "orderId": request.order_id,
                    "itemCount": count,
                    "submission": submission,
                    "decision": decision,
                }
            )
        for target, decisions in by_partition.items():
            for start in range(0, len(decisions), ITEMS_PER_MESSAGE):
                chunk = decisions[start : start + ITEMS_PER_MESSAGE]
                out.add(self.internal_topic, PREORDER_DECISIONS, {"decisions": chunk}, target)
        self.save(out)
        return len(decided)

    def command(self, partition: int, command: Json, out: Outbox, received: datetime) -> Json:
        """Apply one book command at the moment it was sent (``at``, set by the router from
        the command's message timestamp; else ``received``); returns ``{ok, error,
        reservations}``."""
        now = parse_iso(str(command["at"])) if command.get("at") else received
        part = self.store.books(partition)
        name = command.get("command")
        rid = command.get("reservationId")
        attempt = command.get("source") if isinstance(command.get("source"), str) else None
        touched: list[Json] = []
        error: str | None = None
        if isinstance(rid, str):
            key = key_of_reservation_id(rid) or ""
            book = part.books.get(key)
            if book is None or rid not in book:
                return {"ok": False, "error": "not_found", "reservations": []}
            if name == "cancel":
                outcome = book.cancel(rid, self.supply(part, key, book), self.policy, now)
            else:
                outcome = book.commit(rid, self.policy, now, attempt=attempt)
            self.record(key, partition, outcome, out)
            error = outcome.error
            if outcome.reservation is not None:
                touched.append(book.reservation_dict(outcome.reservation))
        else:
            order_id = str(command.get("orderId"))
            for key in sorted(part.orders.get(order_id, ())):
                book = part.books[key]
                if name == "cancel":
                    outcome = book.cancel_order(
                        order_id, self.supply(part, key, book), self.policy, now
                    )
                    self.record(key, partition, outcome, out)
                else:
                    for reservation in book.order_reservations(order_id):
                        outcome = book.commit(
                            reservation.reservation_id, self.policy, now, attempt=attempt
                        )
                        self.record(key, partition, outcome, out)
                touched.extend(book.reservation_dict(r) for r in book.order_reservations(order_id))
            if not touched:
                error = "not_found"
        self.save(out)
        return {"ok": error is None, "error": error, "reservations": touched}

    def has_books(self, partition: int, keys: list[str]) -> bool:
        """Whether any of ``keys`` (of ``partition``, owned here) has a book."""
        books = self.store.books(partition).books
        return any(key in books for key in keys)

    def promote(
        self,
        partition: int,
        keys: Iterable[str],
        changed: Iterable[str],
        out: Outbox,
        now: datetime,
        cause: str,
    ) -> int:
        """A supply message (``cause``, at ``now``) touched ``keys`` and changed the supply
        of ``changed``: promote their waitlists. A key it did not change is a replay (its
        supply is already applied): its book sends the promotions recorded for the cause
        again and decides nothing new. A fresh pass there would decide against a book
        that later inputs have changed since, and announce a promotion that the replay
        of those inputs then contradicts. A promotion lost in a crash between the
        inventory write and the reservation writes is made by the next promotion pass.
        Returns the events queued."""
        part = self.store.books(partition)
        before = len(out.messages)
        changed = set(changed)
        held_until = now - timedelta(hours=self.runtime.settings.confirmed_hold_grace_hours)
        for key in changed:
            self._supplies.pop(key, None)
            book = part.books.get(key)
            if book is not None and book.unsettled_units():
                # stock newer than a confirmation reflects its order: stop holding its units
                as_of = stock_as_of(self.runtime.inventory.get(key))
                settled = book.settle(as_of, held_until, now)
                note_settled(self.runtime.metrics, settled, "stock")
                self.record(key, partition, settled, out)
        for key in keys:
            book = part.books.get(key)
            if book is None:
                continue
            # the supply this book saw must be durable before anything else decides on it
            out.wrote = True
            if key in changed:
                supply = self.supply(part, key, book)
                self.record(key, partition, book.promote(supply, self.policy, now, cause), out)
            else:
                self.record(key, partition, book.resend(cause), out)
        self.save(out)
        return len(out.messages) - before
