"""The storage layout guard against a real broker: recorded on the first start, a match
starts, a changed STREAM_APP_BUCKETS_PER_PARTITION is refused with a clear message (and
through the real CLI the worker exits before touching any state)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from stream_app.layout import LayoutMismatchError, check_layout, current_layout, layout_topic
from tests.fixtures.kafka import KafkaCluster, topic_settings_env

pytestmark = pytest.mark.integration


def test_recorded_then_matched_then_a_changed_bucket_count_is_refused(kafka: KafkaCluster) -> None:
    topic = layout_topic(f"layout-{uuid.uuid4().hex[:6]}")

    async def main() -> None:
        assert await check_layout(kafka.bootstrap, topic, current_layout(16, 16)) == "recorded"
        assert await check_layout(kafka.bootstrap, topic, current_layout(16, 16)) == "matches"
        with pytest.raises(LayoutMismatchError, match="STREAM_APP_BUCKETS_PER_PARTITION is 32 here"):
            await check_layout(kafka.bootstrap, topic, current_layout(32, 16))

    asyncio.run(main())


def test_the_worker_refuses_to_start_on_another_layout(kafka: KafkaCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_id = f"layoutcli-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ, "STREAM_APP_KAFKA_BROKER": kafka.bootstrap, "STREAM_APP_APP_ID": app_id,
        "STREAM_APP_PARTITIONS": "4", "STREAM_APP_DATA_DIR": str(tmp_path),
        **topic_settings_env(app_id),
    }
    cli = [sys.executable, "-m", "stream_app.cli", "topics"]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    changed = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env={**env, "STREAM_APP_BUCKETS_PER_PARTITION": "32"},
        capture_output=True, text=True, timeout=120,
    )
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "refusing to start: STREAM_APP_BUCKETS_PER_PARTITION is 32 here" in changed.stderr
    assert "written with 16" in changed.stderr
