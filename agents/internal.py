"""The app's internal topic: one topic, one agent, handlers chosen by message kind.

Repartition and command messages the app writes to itself (inventory records to apply,
pre-order items to decide, item decisions to collect, book commands, Fluent sync
acknowledgements, channel checkpoints, Fluent reconciliation pages) share
``<app>-internal``; the message KEY names the kind and the partition is always chosen by
the sender (the partition of the state the handler changes). One topic instead of five because of what a fetch costs here: every fetch of
the worker's consumer lists every assigned partition, and encoding/decoding that request
in aiokafka's pure-Python protocol code costs per partition — with 9 topics × 8
partitions it was ~27 % of a core for an idle worker and the bound on decisions per
second at small batches (docs/benchmarks.md). The release commands keep their own topic
and agent: a release runs for minutes and must not hold up the other kinds.

A handler runs inside the agent for one event (table writes go to the event's
partition) and must not raise; a message of an unknown kind is dead-lettered.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson

from stream_app.broker.batching import take_ready
from stream_app.broker.current_event import writing_as
from stream_app.broker.delivery import deliver, source_of
from stream_app.delivery_watch import Message, Observer, watch_of

if TYPE_CHECKING:
    from agents.inventory import GroupedApply, StagedApply
    from stream_app.app import Handler, InternalHandlers, Runtime
    from stream_app.metrics import Metrics
    from tables.keyed import KeyedTable

log = logging.getLogger(__name__)

#: message kinds (message keys) on the internal topic
INVENTORY_APPLY = b"inventory-apply"
SYNC_ACK = b"sync-ack"
PREORDER_ITEMS = b"preorder-items"
PREORDER_DECISIONS = b"preorder-decisions"
BOOK_COMMAND = b"book-command"
CHANNEL_PROGRESS = b"channel-progress"
RECONCILE = b"fluent-reconcile"


def dead_letter_headers(event: faust.EventT, reason: str) -> dict[str, bytes]:
    message = event.message
    return {
        "dlq-reason": reason.encode()[:1000],
        "dlq-source-topic": str(message.topic).encode(),
        "dlq-source-partition": str(message.partition).encode(),
        "dlq-source-offset": str(message.offset).encode(),
    }


def dead_letter_message(
    dlq: faust.TopicT, event: faust.EventT, reason: str, original: bytes | None = None
) -> Message:
    """The dead letter of ``event``: its original bytes (or ``original``), the reason and
    the source in headers. It always fits: an original longer than the app's
    ``dead_letter_max_bytes`` is cut to that prefix, and its size and SHA-256 go in the
    headers (``dlq-original-bytes``, ``dlq-original-sha256``, ``dlq-truncated``)."""
    value = (event.value if original is None else original) or b""
    headers = dead_letter_headers(event, reason)
    most = watch_of(dlq.app).dead_letter_max_bytes
    if len(value) > most:
        headers["dlq-original-bytes"] = str(len(value)).encode()
        headers["dlq-original-sha256"] = hashlib.sha256(value).hexdigest().encode()
        headers["dlq-truncated"] = b"true"
        value = value[:most]
    return (dlq.get_topic_name(), event.key, value, None, list(headers.items()))


def count_dead_letters(metrics: Metrics) -> Observer:
    """An observer of deliveries counting the dead letters in them, by source topic."""

    def observe(messages: Sequence[Message]) -> None:
        for *_, headers in messages:
            if not headers:  # almost every delivery: no dict built for it
                continue
            source = reason = None
            for name, value in headers:
                if name == "dlq-source-topic":
                    source = value
                elif name == "dlq-reason":
                    reason = value
            if source is not None:
                text = (reason or b"").decode(errors="replace")[:300]
                metrics.note_dead_letter(source.decode(), text, time.time())

    return observe


async def dead_letter(dlq: faust.TopicT, event: faust.EventT, reason: str) -> None:
    """Send an event's dead letter and wait until the broker has it (retrying)."""
    await deliver(dlq.app, [dead_letter_message(dlq, event, reason)])


def event_time(event: faust.EventT) -> datetime:
    """The moment an input happened, from its message timestamp: every decision reads
    time from its input, so a replay decides as the first run did. A message without a
    usable timestamp (-1 or 0: some clients send none) falls back to the wall clock."""
    stamp = event.message.timestamp
    if stamp and stamp > 0:
        return datetime.fromtimestamp(stamp, UTC)
    return datetime.now(UTC)


def json_handler(
    dlq: faust.TopicT, what: str, apply: Callable[[Any, int], object], table: KeyedTable
) -> Handler:
    """The handler of one kind of JSON message: ``apply(message, partition)`` stages its
    writes on ``table``, which is then flushed (also after a dead letter: what was staged
    before is kept); a message it cannot read goes to the dead letters with the reason."""

    async def handle(event: faust.EventT) -> None:
        try:
            apply(orjson.loads(event.value), event.message.partition)
        except (ValueError, KeyError, TypeError) as exc:
            log.exception("unreadable %s dead-lettered", what)
            await dead_letter(dlq, event, f"{what}: {exc!r}")
        await table.flush(source_of(event))

    return handle


def dispatch_table(handlers: InternalHandlers) -> dict[bytes, Handler]:
    """Each kind of internal message and its handler: the internal topic's data paths."""
    table = {
        INVENTORY_APPLY: handlers.inventory_apply,  # ingest -> apply to the inventory table
        SYNC_ACK: handlers.sync_ack,  # flush loop -> what Fluent accepted (fluent_accepted)
        PREORDER_ITEMS: handlers.preorder_items,  # intake -> the books decide (reservations)
        PREORDER_DECISIONS: handlers.preorder_decisions,  # books -> the order collector
        BOOK_COMMAND: handlers.book_command,  # reservation-commands router -> the books
        CHANNEL_PROGRESS: handlers.channel_progress,  # a channel's poller -> channel_state
        RECONCILE: handlers.reconcile,  # Fluent's positions -> drifted keys dirty (fluent_accepted)
    }
    missing = sorted(kind.decode() for kind, handler in table.items() if handler is None)
    if missing:
        raise RuntimeError(f"no handler registered for internal message kinds {missing}")
    return {kind: handler for kind, handler in table.items() if handler is not None}


async def handle_group(
    group: Sequence[faust.EventT],
    registry: dict[bytes, Handler],
    grouped: GroupedApply | None,
    dlq: faust.TopicT,
    most_records: int = 2000,
) -> None:
    """Handle one group of internal messages in order. Consecutive inventory applies are
    prepared one after the other and completed as a run (one changelog flush, then their
    hooks in order); a run is completed before any other kind is handled (which sees,
    and follows, the applies before it) and right after an apply whose hooks read its
    keys (``alone``: they see its state, not a later message's) or once the run holds
    ``most_records`` (a flush is one step of the event loop)."""
    run: list[StagedApply] = []
    records = 0
    for event in group:
        if grouped is not None and event.key == INVENTORY_APPLY:
            with writing_as(event):
                staged = await grouped.prepare(event)
            if staged is not None:
                run.append(staged)
                records += staged.records
                if staged.alone or records >= most_records:
                    await grouped.complete(run)
                    run, records = [], 0
            continue
        if run and grouped is not None:
            await grouped.complete(run)
            run, records = [], 0
        handler = registry.get(event.key) if isinstance(event.key, bytes) else None
        with writing_as(event):
            if handler is None:
                log.warning("internal message of unknown kind %r dead-lettered", event.key)
                await dead_letter(dlq, event, f"unknown internal message kind {event.key!r}")
                continue
            await handler(event)
    if run and grouped is not None:
        await grouped.complete(run)


def register(runtime: Runtime) -> None:
    app, names = runtime.app, runtime.names
    watch = watch_of(app)
    watch.dead_letter_max_bytes = runtime.settings.dead_letter_max_bytes
    watch.observers.append(count_dead_letters(runtime.metrics))
    dlq = runtime.topic(names.internal_dlq)

    group_max = runtime.settings.internal_group_max
    most_records = runtime.settings.internal_group_records

    @app.agent(runtime.topic(names.internal), name="internal")
    @runtime.metrics.counting_crashes("internal")
    async def internal(stream: faust.StreamT[bytes]) -> None:
        registry = dispatch_table(runtime.internal_handlers)  # every module has registered
        grouped = runtime.internal_handlers.inventory_grouped
        # groups of what is buffered (no wait), acked once the whole group is handled:
        # consecutive inventory applies share one changelog flush instead of one wait
        # for the broker each (the apply side's bound, docs/benchmarks.md)
        async for group in take_ready(stream, group_max):
            await handle_group(group, registry, grouped, dlq, most_records)
