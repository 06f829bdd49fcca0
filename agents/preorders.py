"""Pre-order agents: intake → reservation books → order collector; commands; supply hook.

* ``preorder-intake`` (``pre-orders``, raw bytes, in groups): undecodable or non-object
  messages → ``pre-orders-dlq``; invalid orders → ``pre-order-results`` with every reason;
  valid ones are split into items. An item whose ``sku|location`` partition is the
  partition the pre-order arrived on is decided right here (Faust assigns partition *p*
  of every topic and table of the app to one worker, so this worker owns that book;
  see :func:`stream_app.broker.current_event.writing_as`): no repartition hop, which is
  most of the decision latency.
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

The books' glue (operations → table writes → events, in crash-safe order) is
:mod:`agents.books`. Everything is at-least-once and idempotent: deterministic reservation ids make a replayed
or resubmitted item a duplicate that re-emits its decision without changing anything.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import TYPE_CHECKING, Any

import faust
import orjson

from agents.books import ITEMS_PER_MESSAGE, Outbox
from agents.internal import (
    BOOK_COMMAND,
    PREORDER_ITEMS,
    dead_letter,
    event_time,
)
from stream_app.app import need
from stream_app.broker.batching import take_ready
from stream_app.broker.current_event import writing_as
from stream_app.broker.delivery import source_of
from stream_app.domain.ids import iso, key_of_reservation_id
from stream_app.domain.preorders import (
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
)

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

COMMANDS = ("cancel", "commit")


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
    preorders = need(runtime.preorders, "the pre-order books")
    store, orders, policy, books = (
        preorders.store, preorders.orders, preorders.policy, preorders.books
    )

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
    @runtime.metrics.counting_crashes("preorder-intake")
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
    @runtime.metrics.counting_crashes("reservation-command-router")
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
    # the promotion reads the supply of keys with a book: such a message's state alone
    runtime.inventory_hooks.reads_supply.append(books.has_books)
