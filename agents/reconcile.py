"""Fluent reconciliation: what Fluent holds against what it last accepted; drift healed.

Data path::

    reconcile_cron (leader) or POST /sync/reconcile (admin key)
      --> FluentClient.inventory_position_pages (GraphQL inventoryPositions, cursor pages;
          one page in memory whatever the catalogue)
      --> per page, the positions grouped by partition: one "fluent-reconcile" message per
          partition on <app>-internal (timers cannot write tables)
      --> internal agent, on the partition's owner: stream_app.domain.delta.reconcile_entry
          per key on fluent_accepted; a drifted key's entry records what Fluent holds and
          gets the DIRTY marker --> the next flush sends its sellable quantity (heals)

Fluent is never summed as a channel (that would count its stock twice): it is only
compared. A replayed message compares again and finds the entry already recording what
Fluent held, so it changes nothing. Reports: the run on the worker that ran it (pages,
positions, error) and, on every worker, what its partitions found per run (checked,
drifted, unknown, a few drifted keys); ``GET /sync/reconciliation`` merges them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from agents.internal import RECONCILE, json_handler
from agents.sync import DIRTY
from stream_app.app import need
from stream_app.broker.delivery import deliver
from stream_app.domain.delta import iso_us, reconcile_entry
from stream_app.fluent.client import FluentClient, FluentConfig, FluentError
from stream_app.records import inventory_key

if TYPE_CHECKING:
    from agents.sync import SyncService
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]
RUNS_KEPT = 10
EXAMPLES_KEPT = 20


def positions_by_partition(
    nodes: list[Json], partition_of: Callable[[str], int]
) -> dict[int, list[list[Any]]]:
    """``[key, onHand]`` of each position with both refs and an integer ``onHand``."""
    out: dict[int, list[list[Any]]] = {}
    for node in nodes:
        sku, location, on_hand = node.get("productRef"), node.get("locationRef"), node.get("onHand")
        if not (isinstance(sku, str) and isinstance(location, str)):
            continue
        if not isinstance(on_hand, int) or isinstance(on_hand, bool):
            continue
        key = inventory_key(sku, location)
        out.setdefault(partition_of(key), []).append([key, on_hand])
    return out


class Reconciler:
    def __init__(self, runtime: Runtime, sync: SyncService) -> None:
        self.runtime = runtime
        self.sync = sync
        self.client: FluentClient | None = None
        self.runs: deque[Json] = deque(maxlen=RUNS_KEPT)  # runs this worker made
        self.found: OrderedDict[str, Json] = OrderedDict()  # run id -> what its partitions found
        self.lock = asyncio.Lock()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def _now_us(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1_000_000)

    async def run(self, run_id: str | None = None) -> Json:
        """Page through Fluent's positions and send each page to the partitions' owners."""
        run_id = run_id or f"rec-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
        run: Json = {
            "runId": run_id,
            "startedAt": iso_us(self._now_us()),
            "pages": 0,
            "positions": 0,
            "state": "running",
            "error": None,
        }
        self.runs.appendleft(run)
        async with self.lock:
            if self.client is None:
                self.client = FluentClient(
                    FluentConfig.from_settings(self.runtime.settings),
                    on_call=self.runtime.metrics.note_fluent_call,
                )
            topic = self.runtime.names.internal
            accepted = self.sync.accepted
            try:
                async for nodes in self.client.inventory_position_pages(
                    self.runtime.settings.reconcile_page_size
                ):
                    read_at = self._now_us()
                    grouped = positions_by_partition(nodes, accepted.partition_of)
                    messages = [
                        (
                            topic,
                            RECONCILE,
                            orjson.dumps({"runId": run_id, "at": read_at, "positions": items}),
                            partition,
                            None,
                        )
                        for partition, items in grouped.items()
                    ]
                    await deliver(self.runtime.app, messages)
                    run["pages"] += 1
                    run["positions"] += len(nodes)
                run["state"] = "completed"
            except FluentError as exc:
                run["state"], run["error"] = "failed", str(exc)
                log.warning("reconciliation %s failed: %s", run_id, exc)
            run["finishedAt"] = iso_us(self._now_us())
        log.info(
            "reconciliation %s %s: %d positions in %d pages",
            run_id,
            run["state"],
            run["positions"],
            run["pages"],
        )
        return run

    def apply(self, message: Json, partition: int) -> Json:
        """In the agent: compare each position with its entry; mark the drifted dirty."""
        run_id, read_at = str(message["runId"]), int(message["at"])
        accepted, metrics = self.sync.accepted, self.runtime.metrics
        found = self.found.setdefault(
            run_id, {"runId": run_id, "checked": 0, "drifted": 0, "unknown": 0, "examples": []}
        )
        while len(self.found) > RUNS_KEPT:
            self.found.popitem(last=False)
        for key, on_hand in message["positions"]:
            entry = accepted.get(key, partition)
            new, drifted = reconcile_entry(entry, int(on_hand), read_at)
            outcome = "drift" if drifted else ("unknown" if entry is None else "match")
            found["checked"] += 1
            metrics.reconciled.labels(outcome).inc()
            if drifted:
                found["drifted"] += 1
                if len(found["examples"]) < EXAMPLES_KEPT:
                    found["examples"].append({"key": key, **(new or {}).get("drift", {})})
                accepted.put(key, new, partition)
                accepted.mark(DIRTY, key, True, partition)
            elif entry is None:
                found["unknown"] += 1
        return found

    def status(self) -> Json:
        return {"runs": list(self.runs), "found": list(self.found.values())}


def merge(workers: list[Json]) -> Json:
    """Runs from every worker, newest first, each with what every partition found."""
    found: dict[str, Json] = {}
    for worker in workers:
        for item in worker.get("found", []):
            total = found.setdefault(
                item["runId"], {"checked": 0, "drifted": 0, "unknown": 0, "examples": []}
            )
            for field in ("checked", "drifted", "unknown"):
                total[field] += int(item.get(field, 0))
            total["examples"] = (total["examples"] + item.get("examples", []))[:EXAMPLES_KEPT]
    runs = sorted(
        (r for w in workers for r in w.get("runs", [])),
        key=lambda r: r.get("startedAt") or "",
        reverse=True,
    )
    empty = {"checked": 0, "drifted": 0, "unknown": 0, "examples": []}
    return {"runs": [{**run, **found.get(run["runId"], empty)} for run in runs]}


def register(runtime: Runtime) -> None:
    app, settings = runtime.app, runtime.settings
    reconciler = need(runtime.reconciler, "the reconciler")
    internal_dlq = runtime.topic(runtime.names.internal_dlq)

    runtime.internal_handlers.reconcile = json_handler(
        internal_dlq, "reconciliation message", reconciler.apply, reconciler.sync.accepted
    )

    @app.task
    async def close_on_stop() -> None:
        """Holds until the worker stops (Faust cancels its tasks), then closes the Fluent
        session a reconciliation opened."""
        try:
            await asyncio.Event().wait()
        finally:
            await reconciler.close()

    if settings.reconcile_cron:

        @app.crontab(settings.reconcile_cron, timezone=UTC, on_leader=True)
        async def nightly_reconciliation() -> None:
            await reconciler.run()
