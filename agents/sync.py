"""Delta sync to Fluent: a flush loop on every worker and the agent that records acceptance.

* ``fluent_accepted`` (per key, tables.keyed) holds what Fluent last accepted per
  SKU/location and a DIRTY MARKER on every key whose sellable quantity may differ from it.
  After each inventory apply the internal agent recomputes the marker of every key the
  message named (a replay restores a marker a kill -9 cut off) and waits for the
  changelog to have it.
* The flush loop (one per worker, every ``flush_interval_seconds`` and early when the
  changes since the last flush reach ``batch_size``) considers the marked keys and the
  keys with pre-order books (whose held units change without an inventory change) of the
  partitions this worker owns: O(dirty + books), never the whole catalogue (a full resync
  does read every key). It sends the dirty ones to Fluent in batches, polls them to
  COMPLETE, and publishes what Fluent accepted or refused, and the marked keys it found
  clean, to the internal topic (kind ``sync-ack``, :mod:`agents.internal`), one message
  per partition.
* The ``sync-ack`` handler of the internal agent applies those acknowledgements to
  ``fluent_accepted`` (timers cannot write tables) and clears the marker of each key that
  is clean at that moment. A key leaves the dirty set only once Fluent accepted it; a
  crash anywhere loses nothing: markers are written before the offset of their cause is.
* The dirty-count gauge reads the marker counts the table keeps (O(partitions)).

About 500 lines on purpose: the steps of a flush run (collect, job, batches, polling,
acknowledgements, backoff, metrics) share one service's state; split up, they would pass
all of it around.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson

from agents.internal import SYNC_ACK, json_handler
from stream_app.app import need
from stream_app.broker.lifecycle import is_ready
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
from stream_app.pacing import Slicer, breathe
from stream_app.records import inventory_key, split_key
from tables.keyed import KeyedTable

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

MAX_RUNS_KEPT = 50
MAX_ERRORS_KEPT = 20

#: the marker kind of keys that may need sending (tables.keyed side keys)
DIRTY = b"dirty"


def unique_sorted(keys: Iterable[str]) -> Iterator[str]:
    """A sorted stream without its repeats (a key both marked and with a book)."""
    last = None
    for key in keys:
        if key != last:
            yield key
            last = key


def now_us() -> int:
    return time.time_ns() // 1000


class SyncService:
    """Per-worker flush state (in memory: it is about this worker's activity, not data)."""

    def __init__(
        self,
        runtime: Runtime,
        accepted: KeyedTable,
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
        # candidates a flush reads or triages are cut into slices of STREAM_APP_LOOP_SLICE_MS,
        # the loop free in between: a flush takes up to flush_max_records (50,000) of them,
        # a full resync every key of the catalogue, and in one step that stopped the worker
        # for seconds (1.5 s per flush at 1M keys; a full resync at 1M would outlast the
        # broker session). A request waits for one step of each busy task (slices of 500
        # made 15 ms steps here)
        self._walk_slices = Slicer(self.settings.loop_slice_seconds)  # candidates read
        self._triage_slices = Slicer(self.settings.loop_slice_seconds)  # candidates triaged
        #: keys with books but no marker found dirty by the last flush (for the gauge)
        self.unmarked_dirty = 0
        self._counts_generation = -1
        #: (partition, key) a capped flush stopped at (the next one starts after it)
        self._cursor: tuple[int, str] | None = None

    # --- reading state ---------------------------------------------------------------
    def owned_partitions(self) -> list[int]:
        app = self.runtime.app
        if app.consumer is None:
            return []
        topic = self.runtime.inventory.changelog_topic
        return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)

    async def close(self) -> None:
        """Close the Fluent client's HTTP session (the worker is stopping)."""
        if self.client is not None:
            await self.client.close()
            self.client = None

    def held_units(self, key: str, partition: int | None = None) -> int:
        preorders = self.runtime.preorders
        return preorders.store.held_units(key, partition) if preorders is not None else 0

    def sellable_of(self, key: str, state: dict[str, Any], partition: int | None = None) -> int:
        agg = aggregate(state, self.runtime.buffers, self.settings.oversell_protection)
        held = self.held_units(key, partition)
        return sellable_quantity(agg.atp, held, self.settings.sellable_policy)

    def held_keys(self, partition: int) -> list[str]:
        preorders = self.runtime.preorders
        return preorders.store.book_keys(partition) if preorders is not None else []

    def candidates(
        self, partitions: list[int], *, full: bool = False
    ) -> Generator[tuple[str, int, dict[str, Any] | None], None, None]:
        """``(key, sellable, accepted)`` of the keys to consider: the marked keys and the
        keys with books; with ``full`` every key (a scan of the catalogue)."""
        inventory = self.runtime.inventory
        if full:
            for partition in partitions:
                for key, state in inventory.items(partition):
                    yield key, self.sellable_of(key, state), self.accepted.get(key)
            return
        # resume after the key the last capped flush stopped at: (partition, key) order;
        # markers are walked lazily from there (a capped flush reads about its cap of
        # them, not every marker of the catalogue: all keys are marked after a load)
        after_partition, after_key = self._cursor or (-1, "")
        turn = bisect.bisect_left(partitions, after_partition)
        for n, partition in enumerate([*partitions[turn:], *partitions[:turn], *partitions[turn:turn + 1]]):
            resumed = partition == after_partition and n == 0
            if partition != after_partition and n == len(partitions):
                continue
            held = sorted(self.held_keys(partition))
            if resumed:
                held = held[bisect.bisect_right(held, after_key):]
            marked = self.accepted.iter_side_keys(partition, DIRTY, after_key if resumed else None)
            keys: Iterable[str] = unique_sorted(heapq.merge(marked, held))
            if partition == after_partition and n > 0:  # the wrap: the keys up to the cursor
                keys = itertools.takewhile(lambda key: key <= after_key, keys)
            for key in keys:
                found = inventory.get(key, partition)
                if found is not None:
                    yield key, self.sellable_of(key, found, partition), self.accepted.get(key, partition)

    async def consider(
        self, partitions: list[int], *, full: bool = False
    ) -> tuple[list[tuple[str, int, dict[str, Any] | None]], bool]:
        """The candidates one flush takes, and whether more wait. Bounded work per flush
        (every key is dirty after an initial load): at most ``flush_max_records``, and the
        next flush resumes after the last one taken (a full resync takes every key). Read
        a slice at a time (stream_app.pacing), the loop free in between: the markers are read
        as they were when the walk began (a key marked meanwhile is taken by the next
        flush), each key's quantities when it is read."""
        most = None if full else self.settings.flush_max_records
        walk = self.candidates(partitions, full=full)
        found = itertools.islice(walk, None if most is None else most + 1)
        considered: list[tuple[str, int, dict[str, Any] | None]] = []
        generation = self.runtime.app.rebalancing_count
        cut_short = False
        while True:
            size = self._walk_slices.size
            part = self._walk_slices.take(found)
            considered.extend(part)
            if len(part) < size:
                break
            await breathe()
            if self.runtime.app.rebalancing_count != generation and considered:
                # partitions move: no walk held across it; the next flush goes on from here
                cut_short = True
                break
        walk.close()  # let go of the partitions' iterators now
        more = cut_short or (most is not None and len(considered) > most)
        if more:
            if most is not None:
                del considered[most:]
            key = considered[-1][0]
            self._cursor = (self.accepted.partition_of(key), key)
        return considered, more

    def still_dirty(
        self, key: str, state: dict[str, Any] | None = None, partition: int | None = None
    ) -> bool:
        """Whether ``key``'s sellable quantity differs from what Fluent accepted (now);
        ``state`` (its inventory state) and ``partition`` when the caller has them."""
        state = state if state is not None else self.runtime.inventory.get(key, partition)
        return self._differs(key, state, self.accepted.get(key, partition), partition)

    def _differs(
        self, key: str, state: dict[str, Any] | None, entry: dict[str, Any] | None, partition: int | None
    ) -> bool:
        return state is not None and is_dirty(self.sellable_of(key, state, partition), entry)

    def refresh(self, keys: list[str], states: dict[str, Any], partition: int) -> None:
        """Mark or unmark ``keys`` of ``partition`` by what they need now (agent context;
        staged); ``states``: the inventory states the caller has. Entries and markers are
        read in one multi-get each, not in point reads per key."""
        missing = [key for key in keys if key not in states]
        found = dict(zip(missing, self.runtime.inventory.get_many(partition, missing), strict=True))
        entries = self.accepted.get_many(partition, keys)
        marked = self.accepted.marks(DIRTY, partition, keys)
        for key, entry, was in zip(keys, entries, marked, strict=True):
            state = states[key] if key in states else found[key]
            self.accepted.set_mark(DIRTY, key, self._differs(key, state, entry, partition), was, partition)

    def dirty_count(self) -> int:
        """Keys waiting for Fluent on this worker: the markers the table counts (kept by
        every write, counted again after a rebalance) and the keys with books but no
        marker that the last flush found dirty. O(partitions), not O(keys)."""
        app = self.runtime.app
        recovery = getattr(app.tables, "recovery", None)
        if app.rebalancing_count != self._counts_generation or getattr(recovery, "in_recovery", False):
            self.accepted.forget_counts()  # recovery and standbys write the databases too
            self._counts_generation = app.rebalancing_count
        marked = sum(self.accepted.side_count(p, DIRTY) for p in self.owned_partitions())
        return marked + self.unmarked_dirty

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
            self.client = FluentClient(
                FluentConfig.from_settings(self.settings),
                on_call=self.runtime.metrics.note_fluent_call,
            )
        return self.client

    def _record_error(self, run: SyncRun, message: str) -> None:
        self.errors.appendleft({"at": iso_us(self.clock()), "runId": run.run_id, "error": message})

    async def flush(self, *, full: bool = False) -> SyncRun | None:
        """One flush of this worker's dirty keys; None when nothing was dirty."""
        async with self.lock:
            return await self._flush(full)

    def _marked(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` have the dirty marker: one multi-get per partition (a walk's
        slice is mostly one partition), not a point read per key."""
        by_partition: dict[int, list[str]] = {}
        for key in keys:
            by_partition.setdefault(self.accepted.partition_of(key), []).append(key)
        return {
            key
            for partition, mine in by_partition.items()
            for key, on in zip(mine, self.accepted.marks(DIRTY, partition, mine), strict=True)
            if on
        }

    async def _flush(self, full: bool) -> SyncRun | None:
        start = self.clock()
        self.last_check_us = start
        self.changed_since_flush.clear()
        partitions = self.owned_partitions()
        considered, more = await self.consider(partitions, full=full)
        dirty: list[tuple[str, int]] = []
        clean_marked: list[str] = []
        unmarked_dirty = 0
        async for part in self._triage_slices.paced(considered):
            dirty += select_dirty(part, start, full_resync=full)
            marked_keys = self._marked([key for key, _, _ in part])
            for key, sellable, entry in part:
                marked = key in marked_keys
                differs = is_dirty(sellable, entry)
                if marked and not differs:
                    clean_marked.append(key)
                elif differs and not marked:
                    unmarked_dirty += 1
        dirty.sort()
        self.unmarked_dirty = unmarked_dirty
        if clean_marked and not full:  # marked but clean again: the agent unmarks them
            await self._acknowledge(None, [], clean_marked)
        if not dirty:
            if more:
                self.trigger.set()
            elif full:
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
                await self._acknowledge(outcome, records, [])
                run.accepted += len(outcome.accepted)
                run.failed += len(outcome.failed)
                self.runtime.metrics.fluent_records.labels("accepted").inc(len(outcome.accepted))
                self.runtime.metrics.fluent_records.labels("failed").inc(len(outcome.failed))
                for (sku, location), message in list(outcome.failed.items())[:5]:
                    self._record_error(run, f"{sku}/{location}: {message}")
            run.advance("completed", self.clock())
            self.runtime.metrics.sync_runs.labels("completed").inc()
            self._note_duration(run)
            self.consecutive_failures = 0
            self.next_allowed_us = 0
            if more:
                self.trigger.set()
            elif full:
                self.full_resync_requested = False
        except (FluentError, OSError, TimeoutError) as exc:
            self._fail(run, exc, client)
        finally:
            self.current = None
        return run

    def _note_duration(self, run: SyncRun) -> None:
        if run.finished_at_us is not None:
            seconds = (run.finished_at_us - run.started_at_us) / 1e6
            self.runtime.metrics.flush_seconds.labels(run.outcome or "unknown").observe(seconds)

    def _fail(self, run: SyncRun, exc: BaseException, client: FluentClient) -> None:
        message = f"{type(exc).__name__}: {exc}"
        run.fail(message, self.clock())
        self.runtime.metrics.sync_runs.labels("failed").inc()
        self._note_duration(run)
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

    async def _acknowledge(
        self, outcome: BatchOutcome | None, records: list[InventoryRecord], clean: list[str]
    ) -> None:
        """Publish Fluent's answer to a batch (``outcome``) and the marked keys found
        ``clean``, one message per partition."""
        qty = {(r.sku, r.location): r.qty for r in records}
        by_partition: dict[int, dict[str, list[Any]]] = {}

        def part_of(key: str) -> dict[str, list[Any]]:
            empty: dict[str, list[Any]] = {"a": [], "f": [], "c": []}
            return by_partition.setdefault(self.accepted.partition_of(key), empty)

        for sku_loc in outcome.accepted if outcome else ():
            key = inventory_key(*sku_loc)
            part_of(key)["a"].append([key, qty.get(sku_loc)])
        for sku_loc, message in outcome.failed.items() if outcome else ():
            key = inventory_key(*sku_loc)
            part_of(key)["f"].append([key, message])
        for key in clean:
            part_of(key)["c"].append(key)
        batch_id = outcome.batch_id if outcome else None
        topic = self.runtime.topic(self.runtime.names.internal)
        at = self.clock()
        pending = [
            await topic.send(
                key=SYNC_ACK,
                value=orjson.dumps(
                    {"type": "ack", "batchId": batch_id, "at": at,
                     "accepted": body["a"], "failed": body["f"], "clean": body["c"]}
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
    service = need(runtime.sync, "the sync service")
    accepted = service.accepted
    hooks = runtime.inventory_hooks
    hooks.stagers.append(_marks_of(service))
    hooks.after_apply.append(_note_hook(service))
    hooks.view_enrichers.append(service.key_status)

    def backoff(failures: int) -> int:
        return failure_backoff_us(
            failures, settings.fluent_backoff_base * 4, max(settings.fluent_backoff_max, 1.0),
            random.random,
        )

    internal_dlq = runtime.topic(names.internal_dlq)

    def acknowledge(message: dict[str, Any], partition: int) -> None:
        record_acknowledgement(accepted, message, backoff, service.still_dirty)

    runtime.internal_handlers.sync_ack = json_handler(
        internal_dlq, "sync acknowledgement", acknowledge, accepted
    )

    @app.task
    async def flush_loop() -> None:
        try:
            await flush_every_interval()
        finally:  # the task is cancelled when the worker stops: close the Fluent session
            await service.close()

    async def flush_every_interval() -> None:
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
    accepted: KeyedTable,
    msg: dict[str, Any],
    backoff: Callable[[int], int],
    still_dirty: Callable[[str], bool],
) -> list[str]:
    """Apply one acknowledgement message (agent context, staged); returns the keys whose
    entry changed. Afterwards every key it names is marked by whether it is dirty NOW: a
    change since the flush read it keeps it marked; a refused key stays marked."""
    at, batch_id = int(msg["at"]), str(msg["batchId"])
    ok = {key: int(qty) for key, qty in msg.get("accepted", []) if qty is not None}
    bad = {key: str(err) for key, err in msg.get("failed", [])}

    def change(key: str, entry: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        if key in ok:
            return apply_ack(entry, ok[key], at, batch_id)
        return apply_failure(entry, bad[key], at, batch_id, backoff)

    changed = accepted.update([*ok, *bad], change)
    for key in dict.fromkeys([*ok, *msg.get("clean", [])]):
        accepted.mark(DIRTY, key, still_dirty(key))
    for key in bad:
        accepted.mark(DIRTY, key, True)
    return changed


def _marks_of(service: SyncService) -> Callable[[list[str], dict[str, Any], int], KeyedTable]:
    """With an inventory apply: mark the message's keys (all of them: a replay restores
    what a kill cut off), staged to be flushed with the inventory's writes."""

    def stage(keys: list[str], states: dict[str, Any], partition: int) -> KeyedTable:
        service.refresh(keys, states, partition)
        return service.accepted

    return stage


def _note_hook(service: SyncService) -> Callable[[faust.EventT, list[str], list[str]], Any]:
    async def hook(event: faust.EventT, keys: list[str], changed: list[str]) -> None:
        service.note_changes(changed)

    return hook
