"""Process metrics: garbage-collection pauses are timed into every live app's metrics
(gc.callbacks is process-wide) and an app that is gone is no longer fed; the event
loop's lag is how late a wake-up came."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

from stream_app.metrics import GC_PAUSES, Metrics


def collections(metrics: Metrics, generation: str) -> tuple[float, float]:
    GC_PAUSES.drain(metrics.gc_pauses)  # what a scrape does first
    samples = {
        (s.name, s.labels.get("generation")): s.value
        for metric in metrics.gc_pauses.collect() for s in metric.samples
    }
    return (samples.get(("stream_app_gc_pause_seconds_count", generation), 0.0),
            samples.get(("stream_app_gc_pause_seconds_sum", generation), 0.0))


def test_each_collection_is_timed_by_generation_in_every_app() -> None:
    one, two = Metrics(), Metrics()
    gc.collect(1)
    gc.collect(1)
    gc.collect(2)
    for metrics in (one, two):
        count, seconds = collections(metrics, "1")
        assert count >= 2 and seconds > 0
        assert collections(metrics, "2")[0] >= 1
    assert b'stream_app_gc_pause_seconds_bucket{generation="1",le="0.01"}' in one.render()


def test_an_app_that_is_gone_is_not_fed() -> None:
    metrics = Metrics()
    histogram = weakref.ref(metrics.gc_pauses)
    gc.collect(2)
    assert collections(metrics, "2")[0] >= 1  # fed while the app lives
    del metrics
    gc.collect()
    assert histogram() is None  # the process-wide hook kept no reference to it


def test_the_loop_lag_is_how_late_a_wake_up_came() -> None:
    """A step that holds the loop for 60 ms makes the next wake-up that late."""
    metrics = Metrics()

    async def scenario() -> None:
        watching = asyncio.create_task(metrics.watch_loop_lag(interval=0.01))
        await asyncio.sleep(0.05)  # a few prompt wake-ups
        time.sleep(0.06)  # noqa: ASYNC251 - one step holds the loop, on purpose
        await asyncio.sleep(0.05)
        watching.cancel()

    asyncio.run(scenario())
    samples = {
        (s.name, s.labels.get("le")): s.value
        for metric in metrics.loop_lag.collect() for s in metric.samples
    }
    count = samples[("stream_app_event_loop_lag_seconds_count", None)]
    under_50ms = samples[("stream_app_event_loop_lag_seconds_bucket", "0.05")]
    assert count >= 3
    assert count - under_50ms >= 1  # the wake-up behind the held step (others may be late on a loaded machine)


class RecordingLock:
    """A lock that records (instead of deadlocking) a second acquire by its holder."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reentered = False

    def __enter__(self) -> None:
        if not self.lock.acquire(timeout=0.5):
            self.reentered = True
            raise RuntimeError("lock held")

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_collection_while_the_histogram_is_locked_does_not_touch_it() -> None:
    """A collection can start while prometheus_client holds the histogram's own lock (a
    scrape copying its children allocates): the callback must not take that lock (its
    locks are not reentrant: the worker would hang). The pause is observed at the next
    scrape instead."""
    metrics = Metrics()
    lock = RecordingLock()
    metrics.gc_pauses._lock = lock  # type: ignore[attr-defined]
    before = collections(metrics, "0")[0]
    with lock:
        gc.collect(0)
    assert not lock.reentered
    assert collections(metrics, "0")[0] == before + 1  # drained at the "scrape"
