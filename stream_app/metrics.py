"""Prometheus metrics of one worker (its own registry: several apps may share a process in tests)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from stream_app.pacing import FOREGROUND, Foreground

#: a path segment holding an id (job, batch, order): one label for all of them
_ID_SEGMENT = re.compile(r"/[0-9][^/]*")
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: the latest dead letters a worker keeps per source topic (for the console)
LATEST_DEAD_LETTERS = 10
#: seconds from a pre-order's arrival (its message timestamp) to its decision
DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: seconds a garbage collection stopped the process (the loop answers nothing meanwhile)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class GcPauses:
    """Times every garbage collection of the process (``gc.callbacks``: process-wide, so
    one instance per process, shared by every app's metrics). The callback only appends
    to a queue per watched histogram: a collection can start while prometheus_client holds
    one of its (non-reentrant) locks, even the histogram's own during a scrape, so the
    histograms are fed at the next scrape (:meth:`drain`), never from the callback."""

    def __init__(self) -> None:
        self._started = 0.0
        #: watched histogram → pauses not yet observed (apps come and go: weak keys)
        self._queues: weakref.WeakKeyDictionary[Histogram, deque[tuple[str, float]]] = (
            weakref.WeakKeyDictionary()
        )
        self._installed = False

    def watch(self, histogram: Histogram) -> None:
        self._queues[histogram] = deque(maxlen=100_000)
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def drain(self, histogram: Histogram) -> None:
        """Observe the pauses queued for ``histogram`` (at a scrape)."""
        queue = self._queues.get(histogram)
        while queue:
            generation, seconds = queue.popleft()
            histogram.labels(generation).observe(seconds)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = (str(info.get("generation", "?")), time.perf_counter() - self._started)
        for queue in list(self._queues.values()):
            queue.append(pause)


GC_PAUSES = GcPauses()

#: how often the event loop's lateness is sampled (a wake-up per interval)
LOOP_LAG_INTERVAL = 0.25
#: seconds a wake-up of the event loop came late: what any request waits behind
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)


class _WebFirst(Collector):
    """How long work gave way to web requests (stream_app.pacing.Foreground): read at
    scrape time, two numbers."""

    def __init__(self, foreground: Foreground) -> None:
        self.foreground = foreground

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "stream_app_web_first_waits",
            "Times long work (ingest, apply, flush, sync) waited for web requests to reach "
            "their handler (STREAM_APP_WEB_FIRST_MS)", value=self.foreground.gave_way)
        yield CounterMetricFamily(
            "stream_app_web_first_wait_seconds",
            "Seconds long work waited for web requests in all: what web first cost the stream",
            value=self.foreground.seconds_given)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records_ingested = Counter(
            "stream_app_inventory_records_total", "Inventory records forwarded for apply",
            registry=self.registry,
        )
        self.records_applied = Counter(
            "stream_app_inventory_records_applied_total", "Inventory records applied to the table",
            registry=self.registry,
        )
        self.records_not_applied = Counter(
            "stream_app_inventory_records_not_applied_total",
            "Inventory records that changed nothing: duplicate (same version) or stale "
            "(a newer one of the channel is applied)",
            ["reason"],
            registry=self.registry,
        )
        self.stalled = Gauge(
            "stream_app_stalled_seconds",
            "Seconds a stream has been waiting for the broker to take its outputs",
            ["source"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "stream_app_dead_letters_total", "Messages sent to a dead-letter topic", ["topic"],
            registry=self.registry,
        )
        self.fluent_records = Counter(
            "stream_app_fluent_records_total", "Records sent to Fluent by outcome", ["outcome"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "stream_app_pruned_total", "Finished entries pruned after their retention",
            ["table"], registry=self.registry,
        )
        self.sync_runs = Counter(
            "stream_app_sync_runs_total", "Sync runs by final state", ["state"], registry=self.registry
        )
        self.dirty_keys = Gauge(
            "stream_app_dirty_keys", "Keys whose sellable quantity Fluent has not accepted yet",
            registry=self.registry,
        )
        self.confirmed_holds_released = Counter(
            "stream_app_confirmed_holds_released_total",
            "Units of CONFIRMED reservations no longer held, by why: the stock a channel "
            "reported reflects the order (stock), or the grace period passed (grace)",
            ["reason"],
            registry=self.registry,
        )
        self.reconciled = Counter(
            "stream_app_reconciled_positions_total",
            "Fluent positions compared with what Fluent last accepted, by outcome "
            "(match, drift: marked dirty to be sent again, unknown: never accepted here)",
            ["outcome"], registry=self.registry,
        )
        self.ready = Gauge("stream_app_ready", "1 when the worker is ready", registry=self.registry)
        self.decisions = Counter(
            "stream_app_decisions_total", "Pre-order items decided, by outcome and tier",
            ["outcome", "tier"], registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "stream_app_decision_seconds",
            "From a pre-order's arrival (message timestamp) to its item's decision",
            buckets=DECISION_BUCKETS, registry=self.registry,
        )
        self.pre_orders_shed = Counter(
            "stream_app_pre_orders_shed_total",
            "POST /pre-orders answered 202 at once because decisions ran behind (above "
            "capacity: STREAM_APP_PRE_ORDER_SHED_AFTER_SECONDS)",
            registry=self.registry,
        )
        self.http_requests = Counter(
            "stream_app_http_requests_total", "Web requests answered, by route and status",
            ["route", "status"], registry=self.registry,
        )
        self.http_seconds = Histogram(
            "stream_app_http_request_seconds", "Time to answer a web request, by route",
            ["route"], buckets=DECISION_BUCKETS, registry=self.registry,
        )
        self.fluent_calls = Counter(
            "stream_app_fluent_calls_total",
            "Fluent HTTP calls, by endpoint (ids replaced) and status (or error kind)",
            ["endpoint", "status"], registry=self.registry,
        )
        self.fluent_seconds = Histogram(
            "stream_app_fluent_call_seconds", "Fluent HTTP call latency, by endpoint",
            ["endpoint"], buckets=DECISION_BUCKETS, registry=self.registry,
        )
        self.flush_seconds = Histogram(
            "stream_app_flush_seconds", "Duration of a Fluent delta flush, by outcome",
            ["outcome"], buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "stream_app_consumer_lag", "Messages not yet read, per source topic and partition "
            "this worker consumes (set at each scrape)", ["topic", "partition"],
            registry=self.registry,
        )
        self.table_keys = Gauge(
            "stream_app_table_keys",
            "Entries of each table in the partitions this worker serves (RocksDB's estimate, "
            "markers included; set at each scrape, O(partitions))", ["table"],
            registry=self.registry,
        )
        self.agent_crashes = Counter(
            "stream_app_agent_crashes_total",
            "Agent bodies ended by an unexpected exception (Faust restarts them)", ["agent"],
            registry=self.registry,
        )
        self.gc_pauses = Histogram(
            "stream_app_gc_pause_seconds",
            "Garbage collections of the worker process by generation, timed (the event "
            "loop answers nothing while one runs)", ["generation"], buckets=GC_BUCKETS,
            registry=self.registry,
        )
        GC_PAUSES.watch(self.gc_pauses)
        self.registry.register(_WebFirst(FOREGROUND))
        self.loop_lag = Histogram(
            "stream_app_event_loop_lag_seconds",
            f"How late a wake-up every {LOOP_LAG_INTERVAL} s of the worker's event loop "
            "came: a step of some task held the loop meanwhile (web requests wait as long)",
            buckets=LOOP_LAG_BUCKETS, registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        #: source topic → (unix time, reason) of its latest dead letters, newest last
        self.latest_dead_letters: dict[str, deque[tuple[float, str]]] = {}

    async def watch_loop_lag(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        """Sample the event loop's lateness until cancelled (a task of the worker)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - asked - interval))

    def counting_crashes(self, agent: str) -> Callable[[F], F]:
        """Decorate an agent's function: an exception ending it (not a cancel: a stop or a
        rebalance) counts in ``stream_app_agent_crashes_total{agent}`` and is re-raised."""

        self.agent_crashes.labels(agent)  # the series exists (0) before any crash

        def decorate(fun: F) -> F:
            @functools.wraps(fun)
            async def counted(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fun(*args, **kwargs)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.agent_crashes.labels(agent).inc()
                    log.exception("agent %s crashed (Faust restarts it)", agent)
                    raise

            counted.counts_crashes = agent  # type: ignore[attr-defined]
            return counted  # type: ignore[return-value]

        return decorate

    def note_fluent_call(self, method: str, path: str, status: str, seconds: float) -> None:
        endpoint = f"{method} {_ID_SEGMENT.sub('/{id}', path)}"
        self.fluent_calls.labels(endpoint, status).inc()
        self.fluent_seconds.labels(endpoint).observe(seconds)

    def note_dead_letter(self, topic: str, reason: str, at: float) -> None:
        self.dead_letters.labels(topic).inc()
        kept = self.latest_dead_letters.get(topic)
        if kept is None:
            kept = self.latest_dead_letters[topic] = deque(maxlen=LATEST_DEAD_LETTERS)
        kept.append((at, reason))

    def dead_letter_view(self) -> dict[str, dict[str, object]]:
        counts = {
            sample.labels["topic"]: int(sample.value)
            for metric in self.dead_letters.collect() for sample in metric.samples
            if sample.name.endswith("_total")
        }
        return {
            topic: {"count": count, "latest": [
                {"at": at, "reason": reason}
                for at, reason in reversed(self.latest_dead_letters.get(topic, ()))
            ]}
            for topic, count in sorted(counts.items())
        }

    def decision_view(self) -> dict[str, object]:
        """Decisions by outcome (summed over tiers) and by tier, pre-orders answered
        pending at once above capacity, and the latency histogram's cumulative buckets:
        cheap (a few dozen samples)."""
        by_outcome: dict[str, int] = {}
        by_tier: dict[str, dict[str, int]] = {}
        for metric in self.decisions.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                outcome, tier = sample.labels["outcome"], sample.labels["tier"]
                by_outcome[outcome] = by_outcome.get(outcome, 0) + int(sample.value)
                by_tier.setdefault(tier, {})[outcome] = int(sample.value)
        buckets: list[tuple[str, int]] = []
        count, total = 0, 0.0
        for metric in self.decision_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((sample.labels["le"], int(sample.value)))
                elif sample.name.endswith("_count"):
                    count = int(sample.value)
                elif sample.name.endswith("_sum"):
                    total = float(sample.value)
        shed = sum(int(sample.value) for metric in self.pre_orders_shed.collect()
                   for sample in metric.samples if sample.name.endswith("_total"))
        return {"byOutcome": by_outcome, "byTier": by_tier, "shed": shed,
                "latency": {"count": count, "sumSeconds": round(total, 6), "buckets": buckets}}

    def render(self) -> bytes:
        GC_PAUSES.drain(self.gc_pauses)
        return bytes(generate_latest(self.registry))
