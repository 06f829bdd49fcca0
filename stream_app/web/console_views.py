"""What the operations console (``GET /``) reads besides the flows' own endpoints.

* ``GET /console/status``: every worker's partitions, consumer lag per topic, dead letters
  per source topic with the latest reasons, and decisions by outcome and tier with their
  latency histogram; each worker answers ``?scope=local`` and the asked one merges. All
  of it is in memory already: O(assigned partitions + topics), never O(catalogue).
* ``GET /campaigns/{sku}/{location}``: one SKU/location's campaign per ship date
  (:func:`stream_app.domain.campaign.campaign_view`), forwarded to the owner.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from agents.books import supply_for
from stream_app.app import need
from stream_app.broker.lag import lag_by_topic
from stream_app.cluster import fetch_json, other_workers
from stream_app.domain.campaign import campaign_view
from stream_app.domain.preorders import key_problems
from stream_app.records import inventory_key
from stream_app.web.errors import ApiView, error_body
from stream_app.web.views import forward_to_owner

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]


def merge_status(workers: list[Json]) -> Json:
    lag: dict[str, int] = {}
    dead: dict[str, Json] = {}
    outcomes: dict[str, int] = {}
    tiers: dict[str, dict[str, int]] = {}
    buckets: dict[str, int] = {}
    count, total, shed = 0, 0.0, 0
    for worker in workers:
        for topic, n in (worker.get("lag") or {}).items():
            lag[topic] = lag.get(topic, 0) + int(n)
        for topic, view in (worker.get("deadLetters") or {}).items():
            into = dead.setdefault(topic, {"count": 0, "latest": []})
            into["count"] += int(view.get("count", 0))
            into["latest"] = sorted([*into["latest"], *view.get("latest", [])],
                                    key=lambda d: -float(d.get("at", 0)))[:10]
        decisions = worker.get("decisions") or {}
        for outcome, n in (decisions.get("byOutcome") or {}).items():
            outcomes[outcome] = outcomes.get(outcome, 0) + int(n)
        for tier, by in (decisions.get("byTier") or {}).items():
            into_tier = tiers.setdefault(tier, {})
            for outcome, n in by.items():
                into_tier[outcome] = into_tier.get(outcome, 0) + int(n)
        shed += int(decisions.get("shed", 0))
        latency = decisions.get("latency") or {}
        count += int(latency.get("count", 0))
        total += float(latency.get("sumSeconds", 0.0))
        for le, n in latency.get("buckets", []):
            buckets[le] = buckets.get(le, 0) + int(n)
    return {
        "workers": workers,
        "lag": lag,
        "deadLetters": dead,
        "decisions": {"byOutcome": outcomes, "byTier": tiers, "shed": shed,
                      "latency": {"count": count, "sumSeconds": round(total, 6),
                                  "buckets": sorted(buckets.items(), key=lambda b: float(b[0]))}},
        "unreachable": [w for w in workers if "unreachable" in w],
    }


def register(runtime: Runtime) -> None:
    app = runtime.app
    preorders = need(runtime.preorders, "the pre-order books")
    store, policy = preorders.store, preorders.policy

    def local_status() -> Json:
        partitions = sorted(
            tp.partition
            for tp in (app.assignor.assigned_actives() if app.consumer else set())
            if tp.topic == runtime.inventory.changelog_topic
        )
        standbys = sorted(
            tp.partition
            for tp in (app.assignor.assigned_standbys() if app.consumer else set())
            if tp.topic == runtime.inventory.changelog_topic
        )
        return {
            "url": str(app.conf.canonical_url),
            "partitions": partitions,
            "standbys": standbys,
            "lag": lag_by_topic(app),
            "deadLetters": runtime.metrics.dead_letter_view(),
            "decisions": runtime.metrics.decision_view(),
        }

    @app.page("/console/status")
    class ConsoleStatus(ApiView):
        async def get(self, request: Request) -> Response:
            local = local_status()
            if request.query.get("scope") == "local":
                return self.json(local)
            remote = await asyncio.gather(*(
                fetch_json(app.http_client, url, "/console/status", seconds=3)
                for url in other_workers(runtime)
            ))
            return self.json(merge_status([local, *remote]))

    @app.page("/campaigns/{sku}/{location}")
    class Campaign(ApiView):
        async def get(self, request: Request, sku: str, location: str) -> Response:
            reasons = key_problems(sku, location, policy)
            if reasons:
                return self.json(error_body(400, reasons), status=400)
            key = inventory_key(sku, location)
            forwarded = await forward_to_owner(
                runtime, store.changelog_topic, store.partition_of(key), self.web, request
            )
            if forwarded is not None:
                return forwarded
            part = store.books(store.partition_of(key))
            book = store.existing_book(key)
            supply = supply_for(runtime, key, sku, part.categories.get(key))
            if book is None:
                return self.json({"sku": sku, "location": location,
                                  "currentInventory": supply.current_atp,
                                  "overbookingRate": supply.overbooking_rate, "shipDates": []})
            return self.json(campaign_view(book, supply, runtime.settings.waitlist_enabled))
