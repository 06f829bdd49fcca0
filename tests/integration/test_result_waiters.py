"""The pre-order results follower of the web view, against the real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import orjson
import pytest

from agents.result_waiters import ResultWaiters
from tests.fixtures.kafka import KafkaCluster, Producer

pytestmark = pytest.mark.integration


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.05)


async def test_follower_runs_on_demand_and_stops_when_idle(kafka: KafkaCluster) -> None:
    topic = f"results-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka.bootstrap)
    await producer.start()
    await producer.send(topic, {"orderId": "warm-up"}, b"warm-up")  # the topic exists
    waiters = ResultWaiters(idle_seconds=0.5)
    serving = asyncio.create_task(waiters.serve(kafka.bootstrap, topic))
    try:
        await asyncio.sleep(0.3)
        assert not waiters.ready.is_set()  # nobody asked: no consumer runs

        future = waiters.expect("O-1")
        waiters.follow()
        await asyncio.wait_for(waiters.ready.wait(), 30)
        await producer.send(topic, {"orderId": "O-1", "success": True}, b"O-1")
        assert (await asyncio.wait_for(future, 30))["success"] is True

        await until(lambda: not waiters.ready.is_set(), 10, "follower stops when idle")

        again = waiters.expect("O-2")  # and starts again when asked
        waiters.follow()
        await asyncio.wait_for(waiters.ready.wait(), 30)
        await producer.send(topic, orjson.dumps({"orderId": "O-2"}), b"O-2")
        assert (await asyncio.wait_for(again, 30))["orderId"] == "O-2"

        local = waiters.expect("O-3")  # a result published by this worker: no topic
        waiters.resolve_result("O-3", {"orderId": "O-3", "success": False})
        assert local.done() and local.result()["success"] is False
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        await producer.stop()


async def test_close_stops_a_running_follower_quietly(
    kafka: KafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's on_before_shutdown closes the follower: its consumer is stopped before
    the task is cancelled, and serve() ends without logging a failure."""
    topic = f"results-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka.bootstrap)
    await producer.start()
    await producer.send(topic, {"orderId": "warm-up"}, b"warm-up")
    await producer.stop()
    waiters = ResultWaiters(idle_seconds=60)
    serving = asyncio.create_task(waiters.serve(kafka.bootstrap, topic))
    waiters.expect("O-1")
    waiters.follow()
    await asyncio.wait_for(waiters.ready.wait(), 30)
    await waiters.close()
    await asyncio.wait_for(serving, 10)  # ends by itself, not by a cancel
    assert not waiters.ready.is_set()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
