"""The release service: what the ``release-apply`` agent runs for one command on one
partition (expiry, the two-step release with its Fluent ``createOrder`` fan-out, pruning)
and the run reports it keeps. The data path and the crash-safety argument are in
:mod:`agents.release`; the rules are pure functions of :mod:`stream_app.domain.release`.

One class of about 440 lines: its steps share the run's state (progress, failures, the
Fluent client and its fail-fast count) and are read in the order they run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import faust
import orjson

from agents.books import note_settled, supply_for
from stream_app.broker.delivery import deliver, flush_writes
from stream_app.domain.book import ReservationBook
from stream_app.domain.ids import iso, key_of_reservation_id, parse_iso, retention_cutoff
from stream_app.domain.model import Outcome, Reservation
from stream_app.domain.preorders import Policy
from stream_app.domain.release import (
    FINAL_PART_STATES,
    ReleaseOutcome,
    allocate_release,
    catch_up_needed,
    create_order_input,
    due_release_date,
    order_created,
    order_failed,
    plan_counts,
    plan_release,
    release_date_at,
    release_report,
    released_by_run,
)
from stream_app.fluent.client import (
    FluentAuthError,
    FluentClient,
    FluentConfig,
    FluentError,
    FluentUnavailable,
)
from tables.releases import ReleaseRuns
from tables.reservations import OrderResults, stored_step

if TYPE_CHECKING:
    from stream_app.app import Runtime
    from tables.reservations import ReservationStore

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: failures listed per partition report (the counts cover all of them)
FAILURES_KEPT = 20
#: order results applied (written, events queued) per group while orders are created
APPLY_GROUP = 500
#: seconds between progress writes of a partition report while orders are created
PROGRESS_EVERY = 1.0


#: why a run stopped when another worker owns the partition now
MOVED = "the partition moved"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Step:
    """What one step of a release changes: reservation writes and ``reservation-events``.

    :meth:`flush` writes the reservations (last state per id; each touched chunk of the
    reservations table once, see :mod:`tables.reservations`) and returns only when the
    broker has them, then sends the events straight through the producer and waits for
    them too (Faust's per-message ``topic.send`` costs more than the release itself at
    100,000 events)."""

    def __init__(
        self, app: faust.App, store: ReservationStore, events_topic: str, partition: int
    ) -> None:
        self.app = app
        self.store = store
        self.events_topic = events_topic
        self.partition = partition
        self.writes: dict[str, Reservation] = {}
        self.messages: list[tuple[bytes, bytes]] = []

    def record(self, key: str, outcome: Outcome | ReleaseOutcome) -> None:
        for reservation in (*outcome.changed, *outcome.rewrite):
            self.writes[reservation.reservation_id] = reservation
        raw_key = key.encode()
        self.messages.extend((raw_key, orjson.dumps(event)) for event in outcome.events)

    async def flush(self, events_first: bool = False) -> None:
        """``events_first`` for outcomes that are final and deterministic (CONFIRMED: the
        order exists): a crash between the two then repeats the event rather than losing
        it. Otherwise the events follow the durable writes (they never announce a state
        the table may not keep)."""
        if events_first:
            await self._send_events()
            await self._write()
        else:
            await self._write()
            await self._send_events()

    async def _send_events(self) -> None:
        messages, self.messages = self.messages, []
        topic, partition = self.events_topic, self.partition
        await deliver(self.app, [(topic, key, value, partition, None) for key, value in messages])

    async def _write(self) -> None:
        writes, self.writes = self.writes, {}
        self.store.save([stored_step(writes.values())])  # one step: the run is one cause
        await flush_writes(self.app)

    def replay(self, key: str, book: ReservationBook, cause: str) -> int:
        """Queue again the events the run (``cause``) recorded in ``book`` (a resumed run:
        the previous attempt may have died between its writes and its events); the same
        events with the same ids."""
        events = book.recorded_events(cause)
        raw_key = key.encode()
        self.messages.extend((raw_key, orjson.dumps(event)) for event in events)
        return len(events)


@dataclass(slots=True)
class OrderResult:
    key: str
    reservation_id: str
    created_now: bool = False
    error: str | None = None


class ReleaseService:
    """Per-worker release glue: emits commands, applies them to the partition's books."""

    def __init__(
        self,
        runtime: Runtime,
        store: ReservationStore,
        runs: ReleaseRuns,
        policy: Policy,
        clock: Callable[[], datetime] = utcnow,
        orders: OrderResults | None = None,
    ) -> None:
        self.runtime = runtime
        self.orders = orders
        self.settings = runtime.settings
        self.store = store
        self.runs = runs
        self.policy = policy
        self.clock = clock
        self.tz = ZoneInfo(self.settings.release_timezone)
        self.commands = runtime.topic(runtime.names.release_commands)
        self.client: FluentClient | None = None
        #: runs requested through this worker that no partition reported yet
        self.requested: dict[str, Json] = {}
        self.last_export: Json | None = None

    # --- emitting commands (any context) -------------------------------------------
    def today(self) -> date:
        return release_date_at(self.clock(), self.tz)

    async def _broadcast(self, command: Json) -> None:
        raw, topic = orjson.dumps(command), self.commands.get_topic_name()
        await deliver(
            self.runtime.app, [(topic, None, raw, p, None) for p in range(self.settings.partitions)]
        )

    async def request_release(
        self, release_date: date, trigger: str, *, only_if_due: bool = False
    ) -> str:
        """Send a release of ``release_date`` to every partition; returns the run id."""
        run_id = f"rel-{release_date:%Y%m%d}-{uuid.uuid4().hex[:8]}"
        command = {
            "type": "release",
            "runId": run_id,
            "date": release_date.isoformat(),
            "trigger": trigger,
            "onlyIfDue": only_if_due,
            "requestedAt": iso(self.clock()),
        }
        self.requested[run_id] = command
        while len(self.requested) > 50:
            self.requested.pop(next(iter(self.requested)))
        await self._broadcast(command)
        log.info("release %s of %s requested (%s)", run_id, release_date, trigger)
        return run_id

    async def request_expiry(self, trigger: str) -> None:
        await self._broadcast({"type": "expire", "trigger": trigger, "at": iso(self.clock())})

    async def request_prune(self, exported_at: datetime | None, trigger: str) -> datetime:
        """Prune, on every partition, what ended before the retention cutoff (after the
        export at ``exported_at`` wrote it); returns the cutoff."""
        before = retention_cutoff(self.clock(), self.settings.retention_days, exported_at)
        await self._broadcast({"type": "prune", "before": iso(before), "trigger": trigger})
        log.info("pruning what finished before %s (%s)", iso(before), trigger)
        return before

    async def start_up_checks(self) -> str | None:
        """Leader at start-up (or on becoming leader): release a missed night, expire."""
        run_id = None
        if self.settings.release_catch_up:
            due = due_release_date(self.settings.release_cron, self.tz, self.clock())
            run_id = await self.request_release(due, "catch-up", only_if_due=True)
        await self.request_expiry("start-up")
        return run_id

    # --- applying commands (agent context, partition = the event's partition) ------
    async def apply(self, partition: int, command: Json) -> None:
        kind = command.get("type")
        if kind == "release":
            await self.release_partition(partition, command)
        elif kind == "expire":
            out = self._step(partition)
            # the command's moment, not the clock's: a replayed command (a kill before
            # its offset was committed) decides and stamps its events as the first time
            at = command.get("at")
            try:
                now = parse_iso(str(at)) if at else None
            except ValueError:
                log.warning("expire command with an unreadable 'at' %r: the clock's moment", at)
                now = None
            self.expire_partition(partition, out, f"expire@{at}", now)
            await out.flush()
        elif kind == "prune":
            await self.prune_partition(partition, parse_iso(str(command["before"])))
        else:
            log.warning("unknown release command %r skipped", kind)

    async def prune_partition(self, partition: int, before: datetime) -> tuple[int, int]:
        """Prune finished reservations and order results of ``partition`` (idempotent: a
        replay finds nothing left to prune); returns (reservations, order results)."""
        reservations = self.store.prune(partition, before)
        orders = self.orders.prune(partition, before) if self.orders is not None else 0
        await flush_writes(self.runtime.app)
        metrics = self.runtime.metrics
        metrics.pruned.labels("reservations").inc(reservations)
        metrics.pruned.labels("order_results").inc(orders)
        if reservations or orders:
            log.info("partition %d: %d reservations and %d order results pruned (finished "
                     "before %s)", partition, reservations, orders, iso(before))
        return reservations, orders

    def expire_partition(
        self, partition: int, out: Step, cause: str | None = None, now: datetime | None = None
    ) -> int:
        """Uncommitted reservations past ``expiresAt`` (at ``now``, the clock's by
        default) → EXPIRED, then promotion."""
        now = self.clock() if now is None else now
        part = self.store.books(partition)
        expired = 0
        held_until = now - timedelta(hours=self.settings.confirmed_hold_grace_hours)
        for key, book in list(part.books.items()):
            if book.unsettled_units():
                settled = book.settle(None, held_until, now)
                if note_settled(self.runtime.metrics, settled, "grace"):
                    log.warning(
                        "%s: confirmed units released after the grace period (no newer "
                        "stock was reported)", key,
                    )
                out.record(key, settled)
            supply = supply_for(self.runtime, key, book.sku, part.categories.get(key))
            outcome = book.expire(supply, self.policy, now, cause)
            expired += sum(1 for e in outcome.events if e["eventType"] == "EXPIRED")
            out.record(key, outcome)
        if expired:
            log.info("partition %d: %d reservations expired", partition, expired)
        return expired

    def _new_report(self, partition: int, command: Json, now: datetime) -> Json:
        return {
            "runId": str(command["runId"]),
            "partition": partition,
            "releaseDate": str(command["date"]),
            "trigger": str(command.get("trigger") or "manual"),
            "requestedAt": command.get("requestedAt"),
            "state": "allocating",
            "attempts": 0,
            "books": 0,
            "orders": {"toOrder": 0, "created": 0, "alreadyExisted": 0, "failed": 0},
            "failures": [],
            "counts": {},
            "startedAt": iso(now),
            "finishedAt": None,
            "updatedAt": iso(now),
            "worker": str(self.runtime.app.conf.canonical_url),
        }

    def _counts(self, partition: int, release_date: date, started: datetime) -> Json:
        part = self.store.books(partition)
        touched: Iterable[Reservation] = (
            r for book in part.books.values() for r in book.reservations()
            if released_by_run(r, started)
        )
        report = release_report(release_date, touched)
        return {k: report[k] for k in ("reservations", "totals", "units", "byTier")}

    async def release_partition(self, partition: int, command: Json) -> None:
        try:
            run_id = str(command["runId"])
            release_date = date.fromisoformat(str(command["date"]))
        except (KeyError, ValueError):
            log.warning("malformed release command skipped: %r", command)
            return
        now = self.clock()
        report = self.runs.part(run_id, partition)
        if report is not None and report.get("state") in FINAL_PART_STATES:
            return  # a redelivered command of a finished run
        if report is None:
            self.runs.prune(partition)
            report = self._new_report(partition, command, now)
        scheduled = report["trigger"] in ("nightly", "catch-up")
        if command.get("onlyIfDue"):
            last = self.runs.last_completed(partition)
            if not catch_up_needed(last, release_date):
                report.update(state="skipped", finishedAt=iso(now), updatedAt=iso(now),
                              skippedBecause=f"last scheduled release {last} is not older")
                self.runs.put_part(report)
                return
        epoch = self.runtime.app.rebalancing_count  # a rebalance after this: yield
        report["attempts"] = int(report.get("attempts", 0)) + 1
        started = parse_iso(str(report["startedAt"]))
        self.runs.put_part(report)
        log.info("release %s partition %d: attempt %d of %s", run_id, partition,
                 report["attempts"], release_date)

        # step 1: allocation, written before any order exists; the run is the cause of
        # every event it makes (a resumed attempt re-sends them with the same ids)
        cause = f"release:{run_id}"
        out = self._step(partition)
        part = self.store.books(partition)
        to_order: list[tuple[str, Reservation]] = []
        resumed = report["attempts"] > 1
        for key, book in list(part.books.items()):
            if resumed:
                out.replay(key, book, cause)
            supply = supply_for(self.runtime, key, book.sku, part.categories.get(key))
            # every uncommitted reservation past its deadline expires in the same pass
            # (any ship date), and what that frees promotes later queues first; decided
            # as of the run's start, so an attempt that must allocate again (its first
            # one's writes lost) makes the same events, `at` included
            out.record(key, book.expire(supply, self.policy, started, cause))
            outcome = allocate_release(
                book, release_date, supply.current_atp, self.policy, started, cause
            )
            out.record(key, outcome)
            to_order.extend((key, r) for r in outcome.to_order)
        report.update(state="ordering", books=len(part.books), updatedAt=iso(self.clock()))
        report["orders"]["toOrder"] = len(to_order)
        timings = report.setdefault("timings", {})
        timings["allocatedAfterSeconds"] = round((self.clock() - now).total_seconds(), 3)
        report["counts"] = self._counts(partition, release_date, started)
        self.runs.put_part(report)
        await out.flush()  # CONFIRMING is on the broker: now orders may exist
        log.info("release %s partition %d: allocation stored, %d orders to create",
                 run_id, partition, len(to_order))

        # step 2: orders
        timings["persistedAfterSeconds"] = round((self.clock() - now).total_seconds(), 3)
        interrupted = await self._create_orders(partition, to_order, report, epoch)
        timings["finishedAfterSeconds"] = round((self.clock() - now).total_seconds(), 3)
        now = self.clock()
        report["counts"] = self._counts(partition, release_date, started)
        report["updatedAt"] = iso(now)
        if interrupted:
            report.update(state="interrupted", interruptedBecause=interrupted)
            if interrupted != MOVED:  # the report is the new owner's to write then
                self.runs.put_part(report)
            await self._hand_over(partition, command)
            log.warning(
                "release %s partition %d interrupted (%s): the command is sent again, the "
                "partition's owner resumes the run", run_id, partition, interrupted,
            )
            return
        report.update(state="completed", finishedAt=iso(now))
        self.runs.put_part(report)
        if scheduled and release_date <= self.today():
            self.runs.set_last_completed(partition, release_date, run_id)
        orders = report["orders"]
        log.info(
            "release %s partition %d: %d books, %d orders (%d created, %d existed, %d failed)",
            run_id, partition, report["books"], orders["toOrder"], orders["created"],
            orders["alreadyExisted"], orders["failed"],
        )

    def _step(self, partition: int) -> Step:
        return Step(self.runtime.app, self.store, self.runtime.names.reservation_events, partition)

    def _client(self) -> FluentClient:
        if self.client is None:
            self.client = FluentClient(
                FluentConfig.from_settings(self.settings),
                on_call=self.runtime.metrics.note_fluent_call,
            )
        return self.client

    def _must_yield(self, epoch: int) -> str | None:
        """Why the run must stop after a group, if it must: a rebalance or a stop waits
        for this agent to finish its event (``stream_wait_empty``), so a long run yields."""
        app = self.runtime.app
        if app.should_stop:
            return "the worker is stopping"
        if app.rebalancing_count != epoch:
            return "a rebalance started"
        return None

    async def _hand_over(self, partition: int, command: Json) -> None:
        """Send the interrupted command again (after the report is durable): whoever owns
        the partition next resumes the run as its next attempt."""
        await flush_writes(self.runtime.app)
        topic = self.commands.get_topic_name()
        await deliver(self.runtime.app, [(topic, None, orjson.dumps(command), partition, None)])

    async def _create_orders(
        self, partition: int, to_order: list[tuple[str, Reservation]], report: Json, epoch: int
    ) -> str | None:
        """Create the orders; apply results in groups. Returns why it stopped early, if
        it did (see :meth:`_must_yield`); the results applied so far are durable."""
        if not to_order:
            return None
        client = self._client()
        retailer = self.settings.retailer_id
        results: asyncio.Queue[OrderResult] = asyncio.Queue()
        todo = iter(to_order)
        outages = 0
        threshold = self.settings.release_fail_fast_after

        async def call_fluent() -> None:
            nonlocal outages
            while True:
                batch = list(itertools.islice(todo, per_request))
                if not batch:
                    return
                if outages >= threshold:
                    for key, reservation in batch:
                        results.put_nowait(
                            OrderResult(
                                key,
                                reservation.reservation_id,
                                error="not attempted: Fluent unavailable",
                            )
                        )
                    continue
                inputs = [create_order_input(r, retailer) for _, r in batch]
                try:
                    answers = await client.create_orders(inputs)
                except (FluentUnavailable, FluentAuthError) as exc:
                    outages += 1
                    answers = [(i["ref"], f"{type(exc).__name__}: {exc}") for i in inputs]
                except (FluentError, ValueError, OSError, TimeoutError) as exc:
                    answers = [(i["ref"], f"{type(exc).__name__}: {exc}") for i in inputs]
                else:
                    outages = 0
                for (key, reservation), (_, answer) in zip(batch, answers, strict=True):
                    rid = reservation.reservation_id
                    if isinstance(answer, str):
                        results.put_nowait(OrderResult(key, rid, error=answer))
                    else:
                        results.put_nowait(OrderResult(key, rid, created_now=answer))

        per_request = self.settings.release_orders_per_request
        requests = -(-len(to_order) // per_request)
        workers = min(self.settings.release_order_concurrency, requests)
        calls = asyncio.ensure_future(asyncio.gather(*(call_fluent() for _ in range(workers))))
        last_progress = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not calls.done() and results.qsize() < APPLY_GROUP:
                    # let results gather into groups (one flush per group)
                    await asyncio.wait({calls}, timeout=0.1)
                group: list[OrderResult] = []
                while not results.empty() and len(group) < APPLY_GROUP:
                    group.append(results.get_nowait())
                if group:
                    if not self.runs.owns(partition):  # no write for another owner's books
                        return MOVED
                    await self._apply_results(partition, group, report)
                    reason = self._must_yield(epoch)
                    if reason is not None:
                        return reason
                    if loop.time() - last_progress >= PROGRESS_EVERY:
                        last_progress = loop.time()
                        report["updatedAt"] = iso(self.clock())
                        self.runs.put_part(report)
                elif calls.done():
                    calls.result()  # re-raise a bug in the callers
                    return None
                else:  # nothing back yet (a slow or failing Fluent): may still have to yield
                    reason = self._must_yield(epoch)
                    if reason is not None:
                        return reason
        finally:
            if not calls.done():
                calls.cancel()

    async def _apply_results(self, partition: int, group: list[OrderResult], report: Json) -> None:
        now = self.clock()
        # a CONFIRMED event is sent before its write (events_first): after a lost write (a
        # kill, or an old owner evicted mid-group) the order is confirmed again and must
        # make the SAME event, so the event is stamped with the run's start (durable before
        # any order exists), not with the moment an answer came back (the reservation's
        # confirmedAt stays that moment: held units are settled by stock newer than it)
        run_at = parse_iso(str(report["startedAt"]))
        out = self._step(partition)
        part = self.store.books(partition)  # fresh: a rebalance may have rebuilt the cache
        orders = report["orders"]
        for result in group:
            book = part.books.get(result.key)
            if book is None:  # pragma: no cover - the reservation was in this book
                key = key_of_reservation_id(result.reservation_id)
                log.error("book %s of %s vanished during a release", key, result.reservation_id)
                continue
            if result.error is None:
                outcome = order_created(
                    book, result.reservation_id, now, f"release:{report['runId']}", run_at
                )
                orders["created" if result.created_now else "alreadyExisted"] += 1
            else:
                outcome = order_failed(book, result.reservation_id, result.error, now)
                orders["failed"] += 1
                if len(report["failures"]) < FAILURES_KEPT:
                    report["failures"].append(
                        {"reservationId": result.reservation_id, "error": result.error[:300],
                         "at": iso(now)}
                    )
            out.record(result.key, outcome)
        await out.flush(events_first=True)

    # --- local views --------------------------------------------------------------
    def preview(self, release_date: date, now: datetime) -> Json:
        """What a release of ``release_date`` would do now on this worker's partitions
        (nothing changes): reservations and units by tier and outcome. The run itself
        plans again when it starts, on the state it finds then."""
        by_tier: dict[str, dict[str, int]] = {}
        keys = 0
        for partition in self.runs.owned_partitions():
            part = self.store.books(partition)
            for key, book in part.books.items():
                supply = supply_for(self.runtime, key, book.sku, part.categories.get(key))
                plan = plan_release(book, release_date, supply.current_atp, self.policy, now)
                keys += bool(plan)
                plan_counts(book, plan, by_tier)
        return {"byTier": by_tier, "keys": keys}

    def local_reservations(self) -> list[Json]:
        """Every reservation of the partitions this worker owns (for the export)."""
        out: list[Json] = []
        for partition in self.runs.owned_partitions():
            for book in self.store.books(partition).books.values():
                out.extend(r.to_dict() for r in book.reservations())
        return out

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
