"""Topic bootstrap against a real broker: creates, is idempotent, refuses a mismatch."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.bootstrap import TopicMismatchError, ensure_topics
from tests.fixtures.kafka import KafkaCluster

pytestmark = pytest.mark.integration


async def partitions_of(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_creates_missing_topics_and_is_idempotent(kafka: KafkaCluster) -> None:
    names = [f"boot-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    assert sorted(await ensure_topics(kafka.bootstrap, names, 6)) == sorted(names)
    assert await partitions_of(kafka.bootstrap, names) == {n: 6 for n in names}
    assert await ensure_topics(kafka.bootstrap, names, 6) == []


async def test_existing_topic_with_other_partition_count_is_a_clear_error(kafka: KafkaCluster) -> None:
    name = f"boot-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        await admin.close()
    with pytest.raises(TopicMismatchError) as err:
        await ensure_topics(kafka.bootstrap, [name], 8)
    assert f"{name} has 3" in str(err.value) and "STREAM_APP_PARTITIONS" in str(err.value)
