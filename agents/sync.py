"""Delta sync to Fluent: a flush loop on every worker and the agent that records acceptance.

* The flush loop (one per worker, every ``flush_interval_seconds`` and early when the
  changes since the last flush reach ``batch_size``) reads the inventory and
  ``fluent_accepted`` tables of the partitions this worker owns, sends the dirty keys to
  Fluent in batches, polls them to COMPLETE, and publishes what Fluent accepted or refused
  to the internal topic (kind ``sync-ack``, :mod:`agents.internal`), one message per
  partition.
* The ``sync-ack`` handler of the internal agent applies those acknowledgements to
  ``fluent_accepted`` (timers cannot write tables). A key leaves the dirty set only once Fluent accepted it; a crash
  anywhere loses nothing because the dirty set is derived from the tables again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson

from agents.internal import SYNC_ACK, dead_letter
from agents.internal import handlers as internal_handlers
from stream_app.domain.delta import (
    SyncRun,
    apply_ack,
    apply_failure,
    chunks,
    failure_backoff_us,
    is_dirty,
    iso_us,
    select_dirty,
    sellable_quantity,
)
from stream_app.domain.inventory import aggregate
from stream_app.fluent.client import (
    BatchOutcome,
    FluentAuthError,
    FluentClient,
    FluentConfig,
    FluentError,
    InventoryRecord,
    backoff_delay,
)
from stream_app.records import inventory_key, split_key
from tables.bucketed import BucketedTable, define_bucketed_table

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

MAX_RUNS_KEPT = 50
MAX_ERRORS_KEPT = 20


def now_us() -> int:
    return time.time_ns() // 1000


class SyncService:
    """Per-worker flush state (in memory: it is about this worker's activity, not data)."""

    def __init__(
        self,
        runtime: Runtime,
        accepted: BucketedTable,
        clock: Callable[[], int] = now_us,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.accepted = accepted
        self.clock = clock
        self.rng = rng
        self.runs: deque[SyncRun] = deque(maxlen=MAX_RUNS_KEPT)
        self.errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS_KEPT)
        self.trigger = asyncio.Event()
        self.lock = asyncio.Lock()
        self.changed_since_flush: set[str] = set()
        self.full_resync_requested = False
        self.consecutive_failures = 0
        self.next_allowed_us = 0
        self.last_check_us = 0
        self.client: FluentClient | None = None
        self.current: SyncRun | None = None

    # --- reading state ---------------------------------------------------------------
    def owned_partitions(self) -> list[int]:
        app = self.runtime.app
        if app.consumer is None:
            return []
        topic = self.runtime.inventory.changelog_topic
        return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)

    def held_units(self, key: str) -> int:
        held: Callable[[str], int] | None = self.runtime.extras.get("held_units")
        return held(key) if held is not None else 0

    def sellable_of(self, key: str, state: dict[str, Any]) -> int:
        agg = aggregate(state, self.runtime.buffers, self.settings.oversell_protection)
        return sellable_quantity(agg.atp, self.held_units(key), self.settings.sellable_policy)

    def candidates(self, partitions: list[int]) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
        for partition in partitions:
            accepted: dict[str, Any] = {}
            for n in range(self.accepted.buckets):
                accepted.update(self.accepted.load_bucket(f"{partition}:{n}"))
            for key, state in self.runtime.inventory.items_in_partitions([partition]):
                yield key, self.sellable_of(key, state), accepted.get(key)

    def dirty_count(self) -> int:
        return sum(1 for _, s, a in self.candidates(self.owned_partitions()) if is_dirty(s, a))

    def key_status(self, sku: str, location: str, atp: int) -> dict[str, Any]:
        key = inventory_key(sku, location)
        held = self.held_units(key)
        sellable = sellable_quantity(atp, held, self.settings.sellable_policy)
        entry = self.accepted.get(key)
        return {
            "heldByReservations": held,
            "sellable": sellable,
            "lastAccepted": None if entry is None else entry.get("qty"),
            "lastAcceptedAt": None if entry is None else iso_us(int(entry.get("acceptedAt", 0))),
            "dirty": is_dirty(sellable, entry),
            "syncFailures": 0 if entry is None else int(entry.get("failures", 0)),
            "lastSyncError": None if entry is None else entry.get("lastError"),
        }

    # --- flushing -----------------------------------------------------------------------
    def note_changes(self, keys: list[str]) -> None:
        """Flush early once the keys changed since the last flush fill a batch."""
        if len(self.changed_since_flush) < self.settings.batch_size:
            self.changed_since_flush.update(keys)
            if len(self.changed_since_flush) >= self.settings.batch_size:
                self.trigger.set()

    def request_full_resync(self) -> None:
        self.full_resync_requested = True
        self.trigger.set()

    def _client(self) -> FluentClient:
        if self.client is None:
            self.client = FluentClient(FluentConfig.from_settings(self.settings), on_retry=None)
        return self.client

    def _record_error(self, run: SyncRun, message: str) -> None:
        self.errors.appendleft({"at": iso_us(self.clock()), "runId": run.run_id, "error": message})

    async def flush(self, *, full: bool = False) -> SyncRun | None:
        """One flush of this worker's dirty keys; None when nothing was dirty."""
        async with self.lock:
            return await self._flush(full)

    async def _flush(self, full: bool) -> SyncRun | None:
        start = self.clock()
        self.last_check_us = start
        self.changed_since_flush.clear()
        partitions = self.owned_partitions()
        dirty = select_dirty(self.candidates(partitions), start, full_resync=full)
        if not dirty:
            if full:
                self.full_resync_requested = False
            return None
        run = SyncRun(run_id=uuid.uuid4().hex[:12], started_at_us=start, full_resync=full)
        run.dirty = len(dirty)
        self.runs.appendleft(run)
        self.current = run
        client = self._client()
        try:
            run.advance("creating_job", self.clock())
            day = datetime.fromtimestamp(self.clock() / 1e6, tz=UTC).date()
            run.job_id = await client.ensure_job(day, preprocessing=full)
            run.advance("sending_batches", self.clock())
            sent: list[tuple[str, str, list[InventoryRecord]]] = []
            for chunk in chunks(dirty, self.settings.batch_size):
                records = [InventoryRecord(*split_key(key), qty) for key, qty in chunk]
                submitted = await client.submit_batch(records, day=day, preprocessing=full)
                run.job_id = submitted.job_id
                run.batch_ids.append(submitted.batch_id)
                run.records_sent += len(records)
                sent.append((submitted.job_id, submitted.batch_id, records))
            run.advance("polling_batches", self.clock())
            for job_id, batch_id, records in sent:
                outcome = await client.wait_batch(job_id, batch_id, records=records)
                await self._acknowledge(outcome, records)
                run.accepted += len(outcome.accepted)
                run.failed += len(outcome.failed)
                self.runtime.metrics.fluent_records.labels("accepted").inc(len(outcome.accepted))
                self.runtime.metrics.fluent_records.labels("failed").inc(len(outcome.failed))
                for (sku, location), message in list(outcome.failed.items())[:5]:
                    self._record_error(run, f"{sku}/{location}: {message}")
            run.advance("completed", self.clock())
            self.runtime.metrics.sync_runs.labels("completed").inc()
            self.consecutive_failures = 0
            self.next_allowed_us = 0
            if full:
                self.full_resync_requested = False
        except (FluentError, OSError, TimeoutError) as exc:
            self._fail(run, exc, client)
        finally:
            self.current = None
        return run

    def _fail(self, run: SyncRun, exc: BaseException, client: FluentClient) -> None:
        message = f"{type(exc).__name__}: {exc}"
        run.fail(message, self.clock())
        self.runtime.metrics.sync_runs.labels("failed").inc()
        self._record_error(run, message)
        self.consecutive_failures += 1
        base = self.settings.fluent_backoff_base * 4
        cap = max(self.settings.fluent_backoff_max, self.settings.flush_interval_seconds)
        if isinstance(exc, FluentAuthError):
            # bad credentials do not fix themselves: wait long, never storm the token endpoint
            base = self.settings.fluent_auth_backoff_seconds
            cap = max(cap, base * 16)
        delay = backoff_delay(
            self.consecutive_failures, base=base, cap=cap, rng=lambda: 0.5 + 0.5 * self.rng()
        )
        self.next_allowed_us = self.clock() + int(delay * 1_000_000)
        log.error(
            "sync run %s failed (%s records stay dirty; next try in %.1fs): %s",
            run.run_id, run.dirty, delay, message,
        )

    async def _acknowledge(self, outcome: BatchOutcome, records: list[InventoryRecord]) -> None:
        qty = {(r.sku, r.location): r.qty for r in records}
        by_partition: dict[int, dict[str, list[Any]]] = {}
        for sku_loc in outcome.accepted:
            key = inventory_key(*sku_loc)
            part = by_partition.setdefault(self.accepted.partition_of(key), {"a": [], "f": []})
            part["a"].append([key, qty.get(sku_loc)])
        for sku_loc, message in outcome.failed.items():
            key = inventory_key(*sku_loc)
            part = by_partition.setdefault(self.accepted.partition_of(key), {"a": [], "f": []})
            part["f"].append([key, message])
        topic = self.runtime.topic(self.runtime.names.internal)
        at = self.clock()
        pending = [
            await topic.send(
                key=SYNC_ACK,
                value=orjson.dumps(
                    {"type": "ack", "batchId": outcome.batch_id, "at": at,
                     "accepted": body["a"], "failed": body["f"]}
                ),
                partition=partition,
                force=True,
            )
            for partition, body in by_partition.items()
        ]
        await asyncio.gather(*pending)

    def status(self) -> dict[str, Any]:
        client = self.client
        return {
            "url": str(self.runtime.app.conf.canonical_url),
            "partitions": self.owned_partitions(),
            "dirty": self.dirty_count(),
            "flushIntervalSeconds": self.settings.flush_interval_seconds,
            "batchSize": self.settings.batch_size,
            "lastCheckAt": iso_us(self.last_check_us),
            "currentRun": self.current.as_dict() if self.current else None,
            "runs": [run.as_dict() for run in self.runs],
            "consecutiveFailures": self.consecutive_failures,
            "nextFlushNotBefore": iso_us(self.next_allowed_us),
            "fullResyncPending": self.full_resync_requested,
            "fluent": {
                "baseUrl": self.settings.fluent_url,
                "jobs": client.jobs if client else {},
                "client": client.stats() if client else None,
            },
            "errors": list(self.errors),
        }


def register(runtime: Runtime) -> None:
    app, settings, names = runtime.app, runtime.settings, runtime.names
    accepted = define_bucketed_table(
        app, "fluent_accepted", settings.partitions, settings.buckets_per_partition,
        "Last quantity Fluent accepted per SKU/location, and sync failures",
    )
    service = SyncService(runtime, accepted)
    runtime.extras["sync"] = service
    runtime.extras.setdefault("after_inventory_apply", []).append(
        _note_changes_hook(service)
    )
    runtime.extras.setdefault("inventory_view_enrichers", []).append(service.key_status)

    def backoff(failures: int) -> int:
        return failure_backoff_us(
            failures, settings.fluent_backoff_base * 4, max(settings.fluent_backoff_max, 1.0),
            random.random,
        )

    internal_dlq = runtime.topic(names.internal_dlq)

    async def acks(event: faust.EventT) -> None:
        try:
            record_acknowledgement(accepted, orjson.loads(event.value), backoff)
        except (ValueError, KeyError, TypeError) as exc:
            log.exception("unreadable sync acknowledgement dead-lettered")
            await dead_letter(internal_dlq, event, f"sync acknowledgement: {exc!r}")

    internal_handlers(runtime)[SYNC_ACK] = acks

    @app.task
    async def flush_loop() -> None:
        from stream_app.web.views import is_ready

        interval = settings.flush_interval_seconds
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            try:  # a fixed cadence: the flush time does not stretch the window
                await asyncio.wait_for(
                    service.trigger.wait(), timeout=max(0.0, next_tick - loop.time())
                )
            except TimeoutError:
                next_tick += interval
                if next_tick < loop.time():  # fell behind (long flush): skip missed ticks
                    next_tick = loop.time() + interval
            service.trigger.clear()
            if not is_ready(app) or service.clock() < service.next_allowed_us:
                continue
            try:
                await service.flush(full=service.full_resync_requested)
            except Exception:  # a bug must not kill the loop
                log.exception("unexpected error in the sync flush")

    @app.crontab(settings.resync_cron, timezone=UTC)
    async def full_resync() -> None:
        log.info("scheduled full resync: every key will be sent with pre-processing")
        service.request_full_resync()


def record_acknowledgement(
    accepted: BucketedTable, msg: dict[str, Any], backoff: Callable[[int], int]
) -> list[str]:
    """Apply one acknowledgement message (agent context); returns the keys that changed."""
    at, batch_id = int(msg["at"]), str(msg["batchId"])
    ok = {key: int(qty) for key, qty in msg.get("accepted", []) if qty is not None}
    bad = {key: str(err) for key, err in msg.get("failed", [])}

    def change(key: str, entry: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        if key in ok:
            return apply_ack(entry, ok[key], at, batch_id)
        return apply_failure(entry, bad[key], at, batch_id, backoff)

    return accepted.update([*ok, *bad], change)


def _note_changes_hook(
    service: SyncService,
) -> Callable[[faust.EventT, list[str], list[str]], Any]:
    async def hook(event: faust.EventT, keys: list[str], changed: list[str]) -> None:
        service.note_changes(changed)

    return hook
