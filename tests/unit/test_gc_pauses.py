"""Garbage-collection pauses are timed into every live app's metrics (gc.callbacks is
process-wide), and an app that is gone is no longer fed."""

from __future__ import annotations

import gc
import weakref

from stream_app.metrics import GC_PAUSES, Metrics


def collections(metrics: Metrics, generation: str) -> tuple[float, float]:
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
    assert histogram() in GC_PAUSES._histograms
    del metrics
    gc.collect()
    assert histogram() is None  # the process-wide hook kept no reference to it
