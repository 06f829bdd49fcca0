"""The storage layout a deployment was written with, recorded once and checked at start-up.

Stored state is keyed by values that cannot change under it: the chunk size decides
which reservation chunk holds a reservation (tables.reservations), and the format
version says how tables store their entries. A worker started with another value would
look for every key in the wrong place and silently orphan all stored state.

Versions: 1 stored inventory and Fluent acceptance as buckets of keys (one table entry
per bucket, rewritten whole on every change); 2 stores one entry per SKU/location
(tables.keyed). Version 1 state is refused with what to do: the buckets grew past
Kafka's message limit at catalogue scale, which is why the format changed.

The layout is recorded as one message on ``<app id>-layout`` the first time a worker of
the app starts; every later start compares and refuses, naming the setting, when they
differ. The record carries a ``version``: a change of the storage format bumps it and
either migrates or refuses with a clear message.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

#: the storage format; bump it when stored values change shape
LAYOUT_VERSION = 2
_KEY = b"layout"

Layout = dict[str, Any]

#: layout field → the setting that decides it (for the error message)
SETTING_OF = {
    "reservationChunk": "the reservation chunk size (tables.reservations.CHUNK_SIZE)",
    "version": "the storage format version of this release",
}


class LayoutMismatchError(RuntimeError):
    """Stored state was written with another layout than this worker's settings."""


def layout_topic(app_id: str) -> str:
    return f"{app_id}-layout"


def current_layout(reservation_chunk: int) -> Layout:
    return {"version": LAYOUT_VERSION, "reservationChunk": reservation_chunk}


def compare(recorded: Layout, wanted: Layout) -> str | None:
    """Why ``wanted`` cannot run on state written with ``recorded`` (None: it can)."""
    if recorded.get("version") == 1 and wanted.get("version") == 2:
        return (
            "the stored state was written by a release that kept inventory in buckets of "
            "keys (storage format 1); this release keeps one entry per SKU/location "
            "(format 2) and cannot read format 1 tables. Start this release with a new "
            "STREAM_APP_APP_ID and re-ingest from the channels (pre-orders of the old "
            "deployment stay readable with the old release), or keep the old release"
        )
    differences = [
        f"{SETTING_OF.get(field, field)} is {wanted.get(field)} here but the stored state "
        f"was written with {recorded.get(field)}"
        for field in sorted(set(recorded) | set(wanted))
        if recorded.get(field) != wanted.get(field)
    ]
    if not differences:
        return None
    return (
        "; ".join(differences)
        + ". Changing it would orphan every stored record: set it back, or use a new "
        "STREAM_APP_APP_ID (a new deployment, re-ingested from the channels)"
    )


async def read_recorded(bootstrap_servers: str, topic: str) -> Layout | None:
    """The last layout recorded on ``topic`` (partition 0), None when there is none."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= 0:
            return None
        # the embedded broker may report the end of a batch short: read from the last
        # reported record to the high watermark the fetches report
        consumer.seek(tp, max(end - 1, 0))
        found: Layout | None = None
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.key == _KEY and record.value:
                    found = orjson.loads(record.value)
            highwater = consumer.highwater(tp)
            if found is not None and highwater is not None and await consumer.position(tp) >= highwater:
                return found
    finally:
        await consumer.stop()


async def record(bootstrap_servers: str, topic: str, layout: Layout) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(layout), key=_KEY, partition=0)
    finally:
        await producer.stop()


async def check_layout(bootstrap_servers: str, topic: str, wanted: Layout) -> str:
    """Record ``wanted`` on first start (returns "recorded") or compare with what is
    recorded ("matches"); raises :class:`LayoutMismatchError` with the reason."""
    recorded = await read_recorded(bootstrap_servers, topic)
    if recorded is None:
        await record(bootstrap_servers, topic, wanted)
        return "recorded"
    reason = compare(recorded, wanted)
    if reason is not None:
        raise LayoutMismatchError(reason)
    return "matches"
