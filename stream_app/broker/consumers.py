"""Small helpers for aiokafka consumers: plain ones (no consumer group) of the app's
topics, and the hook into the one Faust's consumer thread creates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer`` even when the task stopping it is cancelled again meanwhile (a
    worker's stop cancels its tasks; an interrupted ``stop()`` leaves the consumer
    unclosed, which aiokafka reports as an ERROR at exit)."""
    await asyncio.shield(consumer.stop())


async def assign_from_end(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (waiting for its metadata) positioned at the
    current end: what is published from now on is what the consumer will read."""
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await asyncio.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return tps


ClientHook = Callable[[Any, Any], None]


def on_worker_consumer(
    app: faust.App,
    marker: str,
    created: ClientHook | None = None,
    started: ClientHook | None = None,
) -> None:
    """Hook the aiokafka consumer that Faust's consumer thread creates for ``app``.

    ``created(faust_consumer, client)`` runs when the client is made, ``started(...)``
    after ``client.start()`` (the fetcher exists only then). Once per ``marker`` per app
    instance; installed before the app's consumer exists (it is made lazily on first use).
    """
    if getattr(app, marker, False):
        return
    setattr(app, marker, True)
    original_new_consumer = app._new_consumer

    def _new_consumer() -> Any:
        consumer = original_new_consumer()
        thread = getattr(consumer, "_thread", None)
        create = getattr(thread, "_create_worker_consumer", None)
        if create is None:
            return consumer

        def _create_worker_consumer(*args: Any, **kwargs: Any) -> Any:
            client = create(*args, **kwargs)
            if created is not None:
                created(consumer, client)
            if started is not None:
                original_start = client.start

                async def start() -> None:
                    await original_start()
                    started(consumer, client)

                client.start = start
            return client

        setattr(thread, "_create_worker_consumer", _create_worker_consumer)  # noqa: B010
        return consumer

    setattr(app, "_new_consumer", _new_consumer)  # noqa: B010 - this app instance only
