"""Pre-order agents: intake → reservation books → order collector; commands; supply hook.

* ``preorder-intake`` (``pre-orders``, raw bytes, in groups): undecodable or non-object
  messages → ``pre-orders-dlq``; invalid orders → ``pre-order-results`` with every reason;
  valid ones are split into items. An item whose ``sku|location`` partition is the
  partition the pre-order arrived on is decided right here (Faust assigns partition *p*
  of every topic and table of the app to one worker, so this worker owns that book;
  see :func:`writing_as`): no repartition hop, which is most of the decision latency.
  The others are grouped by partition and sent as ONE message per partition to the
  internal topic (kind ``preorder-items``, :mod:`agents.internal`). ``POST /pre-orders``
  publishes each order to the partition of its first item, and upstream producers get
  the same by keying pre-orders by ``sku|location`` of the first item (Kafka's default
  partitioner is ours).
* ``preorder-items`` handler: decides each item with the partition's
  :class:`ReservationBook` (cached from the ``reservations`` table), writes the changed
  reservations and emits ``reservation-events``. A single-item order is complete here:
  its ``pre-order-results`` value is published at once. Items of multi-item orders go,
  grouped per orderId partition, to the internal topic (kind ``preorder-decisions``).
* ``preorder-decisions`` handler: keeps ``order_results`` for multi-item orders and
  publishes their result once every item is decided.
* ``reservation-commands`` → ``reservation-command-router``: bad ones → DLQ; by
  reservationId to the book partition named by the id; by orderId to every book partition
  (each cancels/commits what it holds of the order) → internal kind ``book-command``.
* the ``after_inventory_apply`` hook promotes waitlisted items when supply changes.

Everything is at-least-once and idempotent: deterministic reservation ids make a replayed
or resubmitted item a duplicate that re-emits its decision without changing anything.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import faust
import faust.streams as faust_streams
import orjson

from agents.internal import (
    BOOK_COMMAND,
    PREORDER_DECISIONS,
    PREORDER_ITEMS,
    dead_letter,
    dead_letter_message,
    event_time,
)
from stream_app.app import PreOrders
from stream_app.batching import take_ready
from stream_app.broker.delivery import Message, deliver, flush_writes, source_of
from stream_app.domain.book import ReservationBook
from stream_app.domain.future_atp import Supply, overbooking_rate_for
from stream_app.domain.ids import iso, key_of_reservation_id, parse_iso
from stream_app.domain.inventory import aggregate, expected_arrivals, stock_as_of
from stream_app.domain.model import Outcome, Reservation
from stream_app.domain.preorders import (
    ItemRequest,
    Policy,
    PreOrder,
    invalid_pre_order_result,
    pre_order_result,
    validate_pre_order,
)
from stream_app.partitioning import partition_for
from stream_app.records import inventory_key
from tables.reservations import (
    OrderResults,
    PartitionBooks,
    ReservationStore,
    Step,
    define_reservation_tables,
    stored_step,
)

if TYPE_CHECKING:
    from stream_app.app import Runtime
    from stream_app.metrics import Metrics

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: items per internal message (keeps messages well under the broker's size limit)
ITEMS_PER_MESSAGE = 2000
COMMANDS = ("cancel", "commit")


@contextlib.contextmanager
def writing_as(event: faust.types.EventT) -> Iterator[None]:
    """Table writes in this block go to ``event``'s partition, as while processing it.

    Faust routes a table write (store and changelog) by the *current event* of the
    stream, and a grouped intake (``take_ready``, like ``take_events``) has none in its
    body. The intake decides the items of partition *p* under an event it took from
    partition *p* of ``pre-orders``: Faust's co-partitioned assignment gives this worker
    the books of *p* with it.
    """
    token = _CURRENT_EVENT.set(weakref.ref(event))
    try:
        yield
    finally:
        _CURRENT_EVENT.reset(token)


# Faust's own context variable (faust/streams.py, 0.15.x): looked up at import so that a
# Faust upgrade without it fails at start-up, not at the first pre-order
if not isinstance(getattr(faust_streams, "_current_event", None), ContextVar):  # pragma: no cover
    raise ImportError(
        "this faust-streaming version has no faust.streams._current_event: "
        "agents.preorders.writing_as needs it (pinned: faust-streaming 0.15.3)"
    )
_CURRENT_EVENT: ContextVar[Any] = faust_streams._current_event


class BadMessage(ValueError):
    """A message that cannot be processed; its text is the dead-letter reason."""


def parse_pre_order_message(
    value: bytes | None, policy: Policy, today: date, max_bytes: int
) -> PreOrder | Json:
    """A valid :class:`PreOrder`, or the ``pre-order-results`` value of an invalid one.

    Raises :class:`BadMessage` for bytes that are not a JSON object (dead letter)."""
    if not value:
        raise BadMessage("empty message")
    if len(value) > max_bytes:
        raise BadMessage(f"message of {len(value)} bytes exceeds {max_bytes}")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadMessage("not a JSON object")
    checked = validate_pre_order(raw, policy, today)
    if isinstance(checked, list):
        order_id = raw.get("orderId")
        shown = str(order_id) if isinstance(order_id, str | int) else ""
        return invalid_pre_order_result(shown, checked)
    return checked


def parse_command(value: bytes | None) -> Json:
    """``{command, reservationId?, orderId?, requestId?}``; raises :class:`BadMessage`."""
    if not value:
        raise BadMessage("empty message")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadMessage("not a JSON object")
    command = raw.get("command")
    if not isinstance(command, str) or command.lower() not in COMMANDS:
        raise BadMessage("command must be 'cancel' or 'commit'")
    rid, order_id = raw.get("reservationId"), raw.get("orderId")
    out: Json = {"command": command.lower()}
    if rid is not None:
        if not isinstance(rid, str) or key_of_reservation_id(rid) is None:
            raise BadMessage("reservationId is not a reservation id of this system")
        out["reservationId"] = rid
    elif order_id is not None and isinstance(order_id, str | int) and str(order_id).strip():
        out["orderId"] = str(order_id).strip()
    else:
        raise BadMessage("reservationId or orderId is required")
    if isinstance(raw.get("requestId"), str):
        out["requestId"] = raw["requestId"]
    return out


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
    on the broker, and no message announces state the changelog may not keep.
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

    async def flush(self, app: faust.App) -> None:
        if self.wrote:
            await flush_writes(app, self.source)
            self.wrote = False
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
        """Hand the event's messages to the producer, then its order results to the
        requests of this worker waiting for them (``POST /pre-orders``)."""
        await out.flush(self.runtime.app)
        if out.results and self.on_result is not None:
            for order_id, result in out.results:
                self.on_result(order_id, result)
        out.results.clear()

    def save(self, out: Outbox) -> None:
        """Write the reservations the event changed (each touched chunk once), before
        any of its messages is sent."""
        if out.steps:
            self.store.save(out.steps)
            out.steps.clear()
            out.wrote = True

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
            self.record(key, partition, outcome, out)
            decided.append((request, count, submission, book, outcome.reservation))
        by_partition: dict[int, list[Json]] = defaultdict(list)
        for request, count, submission, book, reservation in decided:
            decision = book.reservation_dict(reservation)
            decision["itemIndex"] = request.item_index
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


def collect(orders: OrderResults, decisions: Iterable[Json]) -> list[tuple[str, Json]]:
    """Merge item decisions into ``order_results`` (agent context); returns the results
    to publish.

    A result is published once per submission of the order (``submission`` names the
    ``pre-orders`` message the items came from): when the decisions of that submission
    now cover every item. A resubmission re-decides every item (as duplicates), so it
    gets its own, identical result. (Single-item orders never come here: the book
    publishes their result.)
    """
    by_order: dict[str, list[Json]] = defaultdict(list)
    for message in decisions:
        by_order[str(message["orderId"])].append(message)
    publish: list[tuple[str, Json]] = []
    for order_id, messages in by_order.items():
        entry = orders.get(order_id) or {"orderId": order_id, "decisions": {}, "rounds": {}}
        rounds = entry.setdefault("rounds", {})
        completed: set[str] = set()
        for message in messages:
            decision = message["decision"]
            index = str(decision.get("itemIndex", 0))
            entry["itemCount"] = count = int(message.get("itemCount", 1))
            entry["decisions"][index] = decision
            rounds[index] = submission = str(message.get("submission", ""))
            if message.get("published"):
                continue
            if len(rounds) >= count and all(rounds.get(str(i)) == submission for i in range(count)):
                completed.add(submission)
        if len(entry["decisions"]) >= entry["itemCount"]:
            result = pre_order_result(order_id, entry["decisions"].values())
            entry["result"] = result
            if completed:
                publish.append((order_id, result))
        orders.put(order_id, entry)
    return publish


def register(runtime: Runtime) -> None:
    app, settings, names = runtime.app, runtime.settings, runtime.names
    store, orders = define_reservation_tables(app, settings.partitions)
    policy = Policy.from_settings(settings)
    books = Books(runtime, store, policy)
    runtime.preorders = PreOrders(store=store, orders=orders, policy=policy, books=books)

    def held_view(sku: str, location: str, atp: int) -> Json:
        return {"preOrderHeldUnits": store.held_units(inventory_key(sku, location))}

    runtime.inventory_hooks.view_enrichers.append(held_view)

    pre_orders = runtime.topic(names.pre_orders)
    pre_orders_dlq = runtime.topic(names.pre_orders_dlq)
    internal_topic = runtime.topic(names.internal)
    results_topic = runtime.topic(names.pre_order_results)
    commands = runtime.topic(names.reservation_commands)
    commands_dlq = runtime.topic(names.reservation_commands_dlq)

    @app.agent(pre_orders, name="preorder-intake")
    async def intake(stream: faust.StreamT[bytes]) -> None:
        async for events in take_ready(
            stream, settings.preorder_batch_max, settings.preorder_batch_within
        ):
            out = Outbox(source=source_of(events[0]))
            grouped: dict[int, list[Json]] = defaultdict(list)
            local: dict[int, tuple[faust.types.EventT, list[Json]]] = {}
            for event in events:
                received = event_time(event)
                try:
                    parsed = parse_pre_order_message(
                        event.value, policy, received.date(), settings.max_request_bytes
                    )
                except BadMessage as exc:
                    log.warning("dead letter from %s: %s", names.pre_orders, exc)
                    out.add_dead_letter(pre_orders_dlq, event, str(exc))
                    continue
                except Exception as exc:  # never let one message stop the stream
                    log.exception("unexpected error on a pre-order")
                    out.add_dead_letter(pre_orders_dlq, event, f"internal error: {exc!r}")
                    continue
                if isinstance(parsed, dict):
                    out.add_result(results_topic, str(parsed["orderId"]), parsed)
                    continue
                requests = parsed.item_requests()
                source = event.message.partition
                submission = f"{source}:{event.message.offset}"
                for request in requests:
                    wire = request.to_dict()
                    wire["itemCount"] = len(requests)
                    wire["submission"] = submission
                    wire["at"] = iso(received)
                    key = inventory_key(request.sku, request.location)
                    target = partition_for(key, settings.partitions)
                    if target == source:
                        local.setdefault(target, (event, []))[1].append(wire)
                    else:
                        grouped[target].append(wire)
            for partition, (anchor, items) in local.items():
                with writing_as(anchor):
                    try:
                        books.decide(partition, items, out, event_time(anchor))
                    except Exception:  # decide() isolates bad items: this is a bug
                        log.exception("pre-order decisions at intake failed")
                        books.save(out)  # what the books changed in memory is stored
            for partition, items in grouped.items():
                for start in range(0, len(items), ITEMS_PER_MESSAGE):
                    chunk = items[start : start + ITEMS_PER_MESSAGE]
                    out.add(internal_topic, PREORDER_ITEMS, {"items": chunk}, partition)
            await books.flush(out)

    async def book_items(event: faust.EventT) -> None:
        out = Outbox()
        try:
            items = orjson.loads(event.value)["items"]
            books.decide(event.message.partition, items, out, event_time(event))
        except Exception as exc:  # decide() isolates bad items: a bug or a bad message
            log.exception("pre-order item message failed (dead-lettered)")
            books.save(out)  # what the books changed in memory is stored all the same
            out.add_dead_letter(pre_orders_dlq, event, f"internal item message: {exc!r}")
        await books.flush(out)

    async def collector(event: faust.EventT) -> None:
        out = Outbox()
        try:
            decisions = orjson.loads(event.value)["decisions"]
            for order_id, result in collect(orders, decisions):
                out.add(results_topic, order_id.encode(), result, None)
        except Exception as exc:
            log.exception("pre-order decision message failed (dead-lettered)")
            out.add_dead_letter(pre_orders_dlq, event, f"internal decision message: {exc!r}")
        await books.flush(out)

    @app.agent(commands, name="reservation-command-router")
    async def command_router(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                command = parse_command(event.value)
            except BadMessage as exc:
                log.warning("dead letter from %s: %s", names.reservation_commands, exc)
                await dead_letter(commands_dlq, event, str(exc))
                continue
            command.setdefault("at", iso(event_time(event)))
            # the command's own input: a replay of it is answered as the first run was
            message = event.message
            command["source"] = f"{message.topic}:{message.partition}:{message.offset}"
            out = Outbox()
            rid = command.get("reservationId")
            if rid is not None:
                key = key_of_reservation_id(rid) or ""
                targets = [partition_for(key, settings.partitions)]
            else:
                targets = list(range(settings.partitions))
            for partition in targets:
                out.add(internal_topic, BOOK_COMMAND, command, partition)
            await books.flush(out)

    async def book_command(event: faust.EventT) -> None:
        out = Outbox()
        response: Json = {"ok": False, "error": "internal_error", "reservations": []}
        command: Json = {}
        try:
            command = orjson.loads(event.value)
            response = books.command(event.message.partition, command, out, event_time(event))
        except Exception as exc:
            log.exception("book command failed (dead-lettered)")
            books.save(out)
            out.add_dead_letter(commands_dlq, event, f"internal book command: {exc!r}")
        await books.flush(out)
        request_id = command.get("requestId") if isinstance(command, dict) else None
        store.command_done(request_id, response)

    handlers = runtime.internal_handlers
    handlers.preorder_items = book_items
    handlers.preorder_decisions = collector
    handlers.book_command = book_command

    async def promote_after_supply(
        event: faust.EventT, keys: list[str], changed: list[str]
    ) -> None:
        message = event.message
        cause = f"supply:{message.topic}:{message.partition}:{message.offset}"
        out = Outbox()
        books.promote(message.partition, keys, changed, out, event_time(event), cause)
        await books.flush(out)

    runtime.inventory_hooks.after_apply.append(promote_after_supply)
