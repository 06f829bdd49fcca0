"""Prometheus metrics of one worker (its own registry: several apps may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
