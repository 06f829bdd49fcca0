"""agents.inventory.fill_group against the real broker: a trickle of single records
becomes one group per linger (not one per record), a backlog fills a group at once
without waiting for the linger, and nothing is taken twice or skipped."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.inventory import FIRST_ASK, fill_group
from stream_app.bootstrap import ensure_topics
from stream_app.pacing import Slicer
from tests.fixtures.kafka import KafkaCluster

pytestmark = pytest.mark.integration


async def groups_of_a_trickle(
    kafka: KafkaCluster, linger_ms: float, slices: Slicer | None = None
) -> tuple[list[list[int]], float, int]:
    """80 records, one every 5 ms, read in groups; (the groups' values, seconds of the
    longest wait for a group that a backlog would fill at once, turns of the loop other
    tasks got while that group was taken). ``slices``: fill_group's time slices."""
    topic = f"trickle-{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka.bootstrap, [topic], 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(2)])

        async def trickle() -> None:
            for n in range(80):
                await producer.send_and_wait(topic, str(n).encode(), partition=n % 2)
                await asyncio.sleep(0.005)

        sending = asyncio.create_task(trickle())
        groups: list[list[int]] = []
        while sum(map(len, groups)) < 80:
            batches = await fill_group(consumer, 2000, 2000, linger_ms, slices=slices)
            groups.append([int(r.value) for rs in batches.values() for r in rs])
        await sending
        for n in range(300):  # a backlog: more than a group already on the broker
            await producer.send(topic, str(n).encode(), partition=n % 2)
        await producer.flush()
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counting = asyncio.create_task(count_turns())
        await asyncio.sleep(0)
        started = time.monotonic()
        turns = 0
        backlog = await fill_group(consumer, 100, 2000, 5000, slices=slices)
        waited = time.monotonic() - started
        counting.cancel()
        assert sum(len(rs) for rs in backlog.values()) == 100
        # a group of big messages stops at its byte bound, not at its count
        drained = 0
        while drained < 200:  # the rest of the backlog first
            drained += sum(len(rs) for rs in (await fill_group(consumer, 200, 2000, 0, slices=slices)).values())
        for n in range(40):
            await producer.send(topic, b"%d-" % n + b"x" * 10_000, partition=n % 2)
        await producer.flush()
        big: list[bytes] = []
        groups_of_big = 0
        while len(big) < 40:
            group = await fill_group(consumer, 2000, 2000, 300, most_bytes=65_536, slices=slices)
            values = [r.value for rs in group.values() for r in rs]
            assert sum(map(len, values)) <= 65_536 + FIRST_ASK * 10_010  # its bound, about
            big += values
            groups_of_big += 1
        assert sorted(big) == sorted(b"%d-" % n + b"x" * 10_000 for n in range(40))
        assert groups_of_big >= 5  # 400 KB in groups of about 64 KB (2,000 events allowed)
        return groups, waited, turns
    finally:
        await consumer.stop()
        await producer.stop()


def test_a_trickle_is_grouped_by_the_linger_and_a_backlog_is_not_held(kafka: KafkaCluster) -> None:
    lingered, waited, _ = asyncio.run(groups_of_a_trickle(kafka, 150))
    assert sorted(v for group in lingered for v in group) == list(range(80))  # each once
    assert len(lingered) <= 8  # ~0.5 s of records in groups of 150 ms (the first may be short)
    assert waited < 2.0  # a full group does not wait for a 5 s linger
    unlingered, _, _ = asyncio.run(groups_of_a_trickle(kafka, 0))
    print(f"groups: {len(lingered)} with a linger of 150 ms, {len(unlingered)} without")
    assert len(unlingered) >= 2 * len(lingered)  # without it, a group per fetch


def test_a_group_taken_in_time_slices_is_the_same_group_with_the_loop_free_between(
    kafka: KafkaCluster,
) -> None:
    """aiokafka unpacks what it hands out in the call (2,000 records were one ~10 ms step of
    the loop on a slow machine): the ingest takes a prefetched backlog a time-sized slice
    per step. A budget no record fits (and a first slice of one): one record a step, and
    the groups are as above."""
    lingered, waited, turns = asyncio.run(groups_of_a_trickle(kafka, 150, Slicer(1e-12, first=1)))
    assert sorted(v for group in lingered for v in group) == list(range(80))
    assert len(lingered) <= 8 and waited < 2.0
    assert turns >= 50  # the group of 100 from the backlog: the loop turned between takes
