"""stream_app.broker.delivery.deliver_batches against the real broker: per-partition
order kept across several aiokafka batches, the offsets it returns are those of each
partition's last message, tombstones included."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_app.bootstrap import ensure_topics
from stream_app.broker.delivery import deliver_batches
from tests.fixtures.kafka import KafkaCluster

pytestmark = pytest.mark.integration


def test_batches_keep_order_and_report_each_partition_s_last_offset(kafka: KafkaCluster) -> None:
    topic = f"batches-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        await ensure_topics(kafka.bootstrap, [topic], 3)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, max_batch_size=4096)
        await producer.start()
        try:
            app = SimpleNamespace(producer=SimpleNamespace(_producer=producer))
            by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {
                p: [(f"k{p}-{n}".encode(), None if n % 97 == 0 else b"x" * 60 + str(n).encode())
                    for n in range(700)]
                for p in range(3)
            }
            first = await deliver_batches(app, topic, by_partition)  # type: ignore[arg-type]
            second = await deliver_batches(app, topic, {1: by_partition[1][:5]})  # type: ignore[arg-type]
        finally:
            await producer.stop()
        assert second == {1: first[1] + 5}
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            for p in range(3):
                tp = TopicPartition(topic, p)
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                got: list[tuple[int, bytes | None, bytes | None]] = []
                while len(got) < 700 + (5 if p == 1 else 0):
                    batch = await consumer.getmany(tp, timeout_ms=2000)
                    got += [(r.offset, r.key, r.value) for r in batch.get(tp, [])]
                assert [(k, v) for _, k, v in got[:700]] == by_partition[p]  # order kept
                assert got[699][0] == first[p]
        finally:
            await consumer.stop()

    asyncio.run(main())
