"""Inventory agents: ``inventory-changes`` → repartition by SKU/location → inventory table.

Two steps, both at-least-once and idempotent:

* ``ingest`` (:func:`run_ingest`, a plain aiokafka consumer of the group
  ``<app id>-ingest``: the step is stateless) reads raw messages in groups, parses them
  (batch envelopes are split), sends bad parts to ``inventory-changes-dlq`` and forwards
  the good records, grouped per target partition, as ONE message per partition to the
  internal topic (kind ``inventory-apply``, :mod:`agents.internal`). A group's offsets are
  committed only after every forward and dead letter was delivered.
* ``apply`` (the internal agent's handler for that kind) owns partition *p* of the
  table: it applies a group of records with last writer wins, writes each changed
  SKU/location once (tables.keyed) and waits until the changelog has them before the
  hooks (sync, pre-orders) see the keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import faust
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError
from faust.exceptions import NotReady

from agents.internal import INVENTORY_APPLY, dead_letter, dead_letter_message
from stream_app.broker.consumers import stop_consumer
from stream_app.broker.current_event import writing_as
from stream_app.broker.delivery import Message, deliver, source_of, waiting_on_broker
from stream_app.broker.lifecycle import at_shutdown, not_at_shutdown
from stream_app.broker.tansu_offsets import bootstrap_list
from stream_app.domain.inventory import apply_change, empty_state, not_applied_reason
from stream_app.pacing import Slicer, breathe
from stream_app.partitioning import partition_for
from stream_app.records import (
    InventoryRecord,
    Limits,
    Rejected,
    from_wire,
    parse_message,
    to_wire,
)
from tables.keyed import KeyedTable, flush_all

if TYPE_CHECKING:
    from stream_app.app import Runtime
    from stream_app.settings import Settings

log = logging.getLogger(__name__)


def add_to_groups(
    grouped: dict[int, list[list[Any]]], records: list[InventoryRecord], partitions: int
) -> None:
    """Add ``records`` (wire form) to ``grouped`` by target partition."""
    for record in records:
        grouped[partition_for(record.key, partitions)].append(to_wire(record))


def in_messages(
    grouped: dict[int, list[list[Any]]], chunk: int
) -> list[tuple[int, list[list[Any]]]]:
    """Grouped records cut into messages of at most ``chunk`` records."""
    return [
        (partition, items[start : start + chunk])
        for partition, items in grouped.items()
        for start in range(0, len(items), chunk)
    ]


async def deliver_until_done(
    apply_topic: faust.TopicT,
    dlq: faust.TopicT,
    batches: list[tuple[int, list[list[Any]]]],
    dead: list[tuple[faust.EventT, Rejected]],
    source: str | None = None,
) -> None:
    """Send every forward and dead letter, retrying while the broker refuses: the stream
    stalls rather than acknowledging events whose records were not delivered."""
    name = apply_topic.get_topic_name()
    messages: list[Message] = [
        (name, INVENTORY_APPLY, orjson.dumps(items), partition, None)
        for partition, items in batches
    ]
    messages += [
        dead_letter_message(dlq, event, rejected.reason, rejected.original)
        for event, rejected in dead
    ]
    await deliver(apply_topic.app, messages, source=source)


# Records taken, parsed or applied in one step of the loop are sized to
# ``STREAM_APP_LOOP_SLICE_MS`` (stream_app.pacing.Slicer): a request waits for one step of
# each busy task, so the slice bounds GET /inventory p99 under a saturating stream (1M
# keys: slices of 200 records → 25 ms, 100 → 13.5 ms before the group commit; with it 100
# → 31.6 ms, 50 → ~21 ms on 12-04, where 50 records took ~1.5 ms; docs/benchmarks.md)


def apply_records(
    runtime: Runtime,
    records: list[InventoryRecord],
    states: dict[str, Any] | None = None,
    partition: int | None = None,
) -> list[str]:
    """Apply records of one partition (``partition`` when the caller knows it) to the
    inventory table; returns changed keys. ``states``, when given, receives every named
    key's state after the records."""
    by_key: dict[str, list[InventoryRecord]] = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)
    after = states if states is not None else {}

    skipped: Counter[str] = Counter()

    def change(key: str, old: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        state = old if old is not None else empty_state()
        changed = False
        for record in by_key[key]:
            if apply_change(state, record):
                changed = True
            else:
                skipped[not_applied_reason(state, record)] += 1
        after[key] = state
        return state, changed

    # a replay needs no rewrite: the per-key table writes its changelog before local state
    changed = runtime.inventory.update(by_key.keys(), change, partition)
    for reason, count in skipped.items():
        runtime.metrics.records_not_applied.labels(reason).inc(count)
    if skipped["stale"]:
        log.info("%d stale records dropped (a newer update of their channel is applied)",
                 skipped["stale"])
    return changed


class SourceMessage(NamedTuple):
    """What the ingest helpers read of a message (the shape of Faust's). Named tuples,
    not frozen dataclasses: two are built per record read, and a frozen dataclass's
    ``__init__`` costs 1.2 µs (docs/benchmarks.md, catalogue scale)."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds since the epoch; -1 when the producer set none


class SourceEvent(NamedTuple):
    """A record of ``inventory-changes`` read by the ingest consumer."""

    key: bytes | None
    value: bytes | None
    message: SourceMessage


def source_event(record: ConsumerRecord[bytes, bytes]) -> SourceEvent:
    stamp = record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else -1.0
    return SourceEvent(
        record.key, record.value,
        SourceMessage(record.topic, record.partition, record.offset, stamp),
    )


#: events a byte-bounded group asks for first, before it knows their size
FIRST_ASK = 8


def _value_bytes(batches: dict[Any, list[ConsumerRecord[bytes, bytes]]]) -> int:
    return sum(len(r.value or b"") for records in batches.values() for r in records)


async def fill_group(
    consumer: AIOKafkaConsumer,
    most: int,
    wait_ms: int,
    linger_ms: float = 0.0,
    most_bytes: int | None = None,
    slices: Slicer | None = None,
) -> dict[Any, list[ConsumerRecord[bytes, bytes]]]:
    """Records for one group: wait up to ``wait_ms`` for the first, then take more for up
    to ``linger_ms`` after it, up to ``most`` events and about ``most_bytes`` of values.
    Under load a group fills at once (no added wait); a trickle of single records becomes
    groups of ``linger_ms`` worth instead of one forward per record or two: each forward
    is one apply on the internal topic, and an apply waits for its changelog on the
    broker, so the apply side takes a bounded number of them per second (docs/benchmarks.md,
    the sync bench). The byte bound matters for envelopes: 2,000 of 500 records were a
    group of a million records (a 2 s step of the loop and ~0.7 GB during a 1M load).

    With ``slices``, what was prefetched is taken a time-sized slice per step of the loop
    (aiokafka unpacks the records it hands out in the call: 2,000 were one step of ~10 ms
    on a slow machine), and only a take that found nothing waits for more."""
    # with a byte bound, a few first (aiokafka hands out what it prefetched, whatever its
    # size), then as many as the mean size so far leaves room for
    first = most if most_bytes is None else min(most, FIRST_ASK)
    if slices is not None:
        first = min(first, slices.size)
    batches = await consumer.getmany(timeout_ms=wait_ms, max_records=first)
    count = sum(len(records) for records in batches.values())
    size = _value_bytes(batches) if most_bytes is not None else 0
    loop = asyncio.get_running_loop()
    until = loop.time() + linger_ms / 1000
    while batches and count < most and (most_bytes is None or size < most_bytes):
        left_ms = max(0, int((until - loop.time()) * 1000))
        ask = most - count
        if most_bytes is not None:
            ask = max(1, min(ask, (most_bytes - size) * count // max(1, size)))
        if slices is None:
            more = await consumer.getmany(timeout_ms=left_ms, max_records=ask)
        else:
            await breathe()
            ask = min(ask, slices.size)
            began = slices.clock()
            more = await consumer.getmany(timeout_ms=0, max_records=ask)  # never waits
            slices.took(sum(len(records) for records in more.values()), slices.clock() - began)
            if not more and left_ms:
                more = await consumer.getmany(timeout_ms=left_ms, max_records=min(ask, FIRST_ASK))
        if not more:
            if left_ms == 0:
                break
            continue
        for tp, records in more.items():
            batches.setdefault(tp, []).extend(records)
            count += len(records)
        if most_bytes is not None:
            size += _value_bytes(more)
    return batches


async def run_ingest(
    app: faust.App,
    settings: Settings,
    topic: str,
    handle: Callable[[list[Any]], Awaitable[None]],
) -> None:
    """The ingest stage: read ``topic`` with a plain aiokafka consumer of its own group
    (``<app id>-ingest``), hand the records of each fetch to ``handle`` as one group, and
    commit their offsets only once ``handle`` returned (every record forwarded or
    dead-lettered: at-least-once), in group order, each commit overlapping the next
    group's handling. The stage is stateless (it only repartitions), so it
    needs none of Faust's per-event machinery, which bounded it to Faust's per-event
    rate (docs/benchmarks.md). A commit refused by a rebalance leaves the records to
    the partition's next reader (a duplicate apply changes nothing)."""
    fetch_wait = settings.consumer_fetch_max_wait_ms or 500
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_list(settings.bootstrap_servers),
        group_id=f"{settings.app_id}-ingest",
        client_id=f"{settings.app_id}-ingest",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.broker_session_timeout * 1000),
        heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
        rebalance_timeout_ms=int(settings.broker_rebalance_timeout * 1000),
        fetch_max_wait_ms=fetch_wait,
        max_partition_fetch_bytes=max(1_048_576, settings.max_event_bytes + 65_536),
    )

    async def commit(batches: dict[Any, list[ConsumerRecord[bytes, bytes]]]) -> None:
        where = f"{topic}[{min(tp.partition for tp in batches)}]"
        try:  # the stream cannot move on until the broker takes the offsets: a stall
            with waiting_on_broker(app, where):
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.info("ingest commit refused (%r): the next reader replays the records", exc)

    # closed before the worker cancels this task (else "Unclosed AIOKafkaConsumer")
    receiver = at_shutdown(app, lambda: stop_consumer(consumer))
    committing: asyncio.Future[None] | None = None
    takes = Slicer(settings.loop_slice_seconds)  # records taken
    wraps = Slicer(settings.loop_slice_seconds)  # records made events
    try:
        await consumer.start()
        while True:
            batches = await fill_group(consumer, settings.ingest_batch_max,
                                       int(settings.ingest_batch_within * 1000),
                                       settings.ingest_linger_ms, settings.ingest_batch_max_bytes,
                                       takes)
            if not batches:
                continue
            # one group for the whole fetch: one forward per target partition
            events: list[SourceEvent] = []
            async for part in wraps.paced([r for records in batches.values() for r in records]):
                events += [source_event(r) for r in part]
            await handle(events)
            # a group's offsets are committed once it is delivered, in group order, while
            # the next group is read and handled (the commit's round trip overlaps it)
            if committing is not None:
                await committing
            committing = asyncio.ensure_future(commit(batches))
    except ConsumerStoppedError:
        log.info("ingest stopped (the worker is stopping)")
    finally:
        not_at_shutdown(app, receiver)
        if committing is not None and not committing.done():
            committing.cancel()  # not committed: the next reader replays the group
        await stop_consumer(consumer)


@dataclass(slots=True)
class StagedApply:
    """One inventory-apply message applied, its writes staged (tables.keyed), not flushed."""

    event: faust.EventT
    keys: list[str]
    changed: list[str]
    tables: list[KeyedTable]  # tables the stagers wrote beside the inventory
    records: int
    #: a hook reads the state of its keys (a book is waiting on their supply): flushed
    #: and announced before the next message is applied, so the hook sees this one's state
    alone: bool


@dataclass(frozen=True, slots=True)
class GroupedApply:
    """Consecutive inventory applies of one internal group: each ``prepare``d in order,
    a run of them ``complete``d with one flush (agents.internal)."""

    prepare: Callable[[faust.EventT], Awaitable[StagedApply | None]]
    complete: Callable[[list[StagedApply]], Awaitable[None]]


def register(runtime: Runtime) -> None:
    app, settings, names = runtime.app, runtime.settings, runtime.names
    apply_topic = runtime.topic(names.internal)
    dlq = runtime.topic(names.inventory_changes_dlq)
    after_apply = runtime.inventory_hooks.after_apply
    stagers = runtime.inventory_hooks.stagers

    skew_us = int(settings.max_clock_skew_seconds * 1_000_000)

    def limits_for(event: faust.EventT) -> Limits:
        stamp = event.message.timestamp  # seconds; -1/0 when the producer set none
        sent_at = int(stamp * 1_000_000) if stamp and stamp > 0 else None
        return Limits(settings.max_quantity, skew_us, sent_at)

    parse_slices = Slicer(settings.loop_slice_seconds)
    apply_slices = Slicer(settings.loop_slice_seconds)
    wire_slices = Slicer(settings.loop_slice_seconds)  # records read off the wire

    async def ingest_group(events: list[faust.EventT]) -> None:
        # records are grouped by partition as they are parsed, slice by slice (a group of
        # 2,000 grouped at its end was one ~10 ms step of the loop at 1M keys)
        grouped: dict[int, list[list[Any]]] = defaultdict(list)
        records = 0
        dead: list[tuple[faust.EventT, Rejected]] = []
        async for part in parse_slices.paced(events):  # web requests get in between
            for event in part:
                try:
                    good, bad = parse_message(event.value, settings.max_event_bytes, limits_for(event))
                except Exception as exc:  # never let one message stop the stream
                    log.exception("unexpected error parsing a message")
                    good, bad = [], [Rejected(event.value or b"", f"internal error: {exc!r}")]
                add_to_groups(grouped, good, settings.partitions)
                records += len(good)
                dead.extend((event, rejected) for rejected in bad)
        batches = in_messages(grouped, settings.apply_chunk_records)
        for _event, rejected in dead:  # counted once delivered (agents.internal)
            log.warning("dead letter from %s: %s", names.inventory_changes, rejected.reason)
        await deliver_until_done(apply_topic, dlq, batches, dead, source_of(events[0]))
        runtime.metrics.records_ingested.inc(records)

    async def handle(events: list[Any]) -> None:
        """Forward or dead-letter every event of a group before returning: a group that
        fails is handled event by event, and an event that still fails is dead-lettered
        with the error (so the caller may commit past all of them)."""
        try:
            await ingest_group(events)
        except NotReady:  # the worker is stopping: nothing is committed, nothing lost
            raise
        except Exception:
            log.exception("a group of %d events failed: handling them one by one", len(events))
            for event in events:
                try:
                    await ingest_group([event])
                except Exception as exc:
                    log.exception("event %s[%d]@%d dead-lettered after an internal error",
                                  event.message.topic, event.message.partition,
                                  event.message.offset)
                    letter = dead_letter_message(dlq, event, f"internal error: {exc!r}")
                    await deliver(app, [letter], source=source_of(event))

    @app.task
    async def ingest() -> None:
        # the producer and the apply side run first: start after the first recovery
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        try:
            await run_ingest(app, settings, names.inventory_changes, handle)
        except Exception:
            if app.should_stop:  # the producer stopped first: the next start replays
                log.info("ingest stopped with the worker (uncommitted records are replayed)")
                return
            raise

    reads_supply = runtime.inventory_hooks.reads_supply

    async def prepare(event: faust.EventT) -> StagedApply | None:
        """Apply one message's records and stage its writes (not flushed); None when it
        was dead-lettered."""
        try:  # (a bad record dead-letters the message before any of it is applied)
            records: list[InventoryRecord] = []
            async for part in wire_slices.paced(orjson.loads(event.value)):
                records += [from_wire(item) for item in part]
        except Exception as exc:
            log.exception("bad inventory-apply message on %s", names.internal)
            await dead_letter(dlq, event, f"internal record: {exc!r}")
            return None
        partition = event.message.partition  # the sender chose the records' partition
        keys: list[str] = []
        changed: list[str] = []
        together: dict[int, KeyedTable] = {}
        async for part in apply_slices.paced(records):  # web requests get in between
            states: dict[str, Any] = {}
            changed += apply_records(runtime, part, states, partition)
            keys += states
            for stage in stagers:
                table = stage(list(states), states, partition)
                together[id(table)] = table
        keys = list(dict.fromkeys(keys))
        alone = any(reads(partition, keys) for reads in reads_supply)
        return StagedApply(event, keys, list(dict.fromkeys(changed)), list(together.values()),
                           len(records), alone)

    async def complete(run: list[StagedApply]) -> None:
        """Flush what ``run`` staged, once for all of it (one wait for the broker), then
        run each message's hooks in order, as while processing it."""
        tables = {id(table): table for staged in run for table in staged.tables}
        await flush_all([runtime.inventory, *tables.values()], source_of(run[0].event))
        runtime.metrics.records_applied.inc(sum(staged.records for staged in run))
        for index, staged in enumerate(run):
            if index:  # a message's hooks read and mark its ~1,000 keys: one step each
                await breathe()
            with writing_as(staged.event):
                for hook in after_apply:  # also when nothing changed: a replay re-announces
                    await hook(staged.event, staged.keys, staged.changed)

    async def apply(event: faust.EventT) -> None:
        staged = await prepare(event)
        if staged is not None:
            await complete([staged])

    runtime.internal_handlers.inventory_grouped = GroupedApply(prepare, complete)
    runtime.internal_handlers.inventory_apply = apply
