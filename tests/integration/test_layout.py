"""The storage layout guard against a real broker: recorded on the first start, a match
starts, another layout is refused with a clear message; through the real CLI a worker
finding state of storage format 1 (buckets of keys) exits before touching any state."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from stream_app.layout import (
    LayoutMismatchError,
    check_layout,
    current_layout,
    layout_topic,
    read_recorded,
    record,
)
from tests.fixtures.kafka import KafkaCluster, topic_settings_env

pytestmark = pytest.mark.integration


def test_recorded_then_matched_then_a_changed_chunk_size_is_refused(kafka: KafkaCluster) -> None:
    topic = layout_topic(f"layout-{uuid.uuid4().hex[:6]}")

    async def main() -> None:
        assert await check_layout(kafka.bootstrap, topic, current_layout(16)) == "recorded"
        assert await check_layout(kafka.bootstrap, topic, current_layout(16)) == "matches"
        with pytest.raises(LayoutMismatchError, match="chunk size .* is 32 here .* written with 16"):
            await check_layout(kafka.bootstrap, topic, current_layout(32))

    asyncio.run(main())


def test_the_worker_refuses_state_of_the_bucketed_format(kafka: KafkaCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_id = f"layoutcli-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ, "STREAM_APP_KAFKA_BROKER": kafka.bootstrap, "STREAM_APP_APP_ID": app_id,
        "STREAM_APP_PARTITIONS": "4", "STREAM_APP_DATA_DIR": str(tmp_path),
        **topic_settings_env(app_id),
    }
    old = {"version": 1, "bucketsPerPartition": 16, "reservationChunk": 16}  # as 1 recorded it
    asyncio.run(record(kafka.bootstrap, layout_topic(app_id), old))
    refused = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refusing to start: the stored state was written by a release that kept " \
        "inventory in buckets of keys (storage format 1)" in refused.stderr
    assert "new STREAM_APP_APP_ID" in refused.stderr
    assert asyncio.run(read_recorded(kafka.bootstrap, layout_topic(app_id))) == old  # untouched
