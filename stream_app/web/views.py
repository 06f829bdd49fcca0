"""Web view: health and per SKU/location state, answered on any worker.

A request for a key is forwarded to the worker that owns the key's partition (Faust's
router, driven by the partition of our own partitioner rather than by the table key).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import faust
from faust.web import Request, Response
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

from stream_app.broker.assignment import owner_url
from stream_app.broker.lag import consumer_lag
from stream_app.broker.lifecycle import is_ready
from stream_app.broker.stores import estimated_keys
from stream_app.delivery_watch import watch_of
from stream_app.domain.inventory import aggregate, channels_view, expected_arrivals
from stream_app.pacing import FOREGROUND
from stream_app.records import inventory_key
from stream_app.web.errors import ApiView
from stream_app.web.errors import install as install_json_errors
from stream_app.web.priority import install as install_foreground

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"


async def forward_to_owner(
    runtime: Runtime, changelog_topic: str, partition: int, web: faust.web.Web, request: Request
) -> Response | None:
    """Forward to the owner of ``partition``; None when this worker owns it.

    The owner gets the request with the cluster token (a forwarding header without it,
    as a client may send, is ignored) and ``forward_timeout_seconds`` to answer; an owner
    that does not answer in time or cannot be reached is 503 with ``Retry-After``.
    """
    app = runtime.app
    url = owner_url(app, changelog_topic, partition)
    if url is None:
        raise ServiceUnavailable(f"no worker owns partition {partition} yet (rebalancing)")
    credentials = runtime.credentials
    if credentials.is_forwarded(request.headers):
        # Already forwarded once: answer from local state rather than bounce around
        # while the two workers disagree about the assignment.
        return None
    dest = URL(url)
    own = URL(str(app.conf.canonical_url))
    if (dest.host, dest.port) == (own.host, own.port):
        return None
    routed = request.url.with_host(dest.host or "127.0.0.1").with_port(dest.port)
    seconds = runtime.settings.forward_timeout_seconds
    try:
        async with app.http_client.request(
            method=request.method,
            url=routed,
            headers=credentials.forwarding_headers(request.headers),
            data=await request.read(),
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            return web.bytes(
                await response.read(), content_type=response.content_type,
                status=response.status,
                headers={k: v for k, v in response.headers.items() if k in _PASSED_BACK},
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("forwarding %s %s to %s failed: %r", request.method, request.url.path, dest, exc)
        return web.json(
            {"error": "unavailable", "reasons": [f"the worker owning partition {partition} "
             f"did not answer within {seconds:g}s"],
             "message": "the owner of this key did not answer in time; try again"},
            status=503, headers={"Retry-After": "1"},
        )


_PASSED_BACK = frozenset({"Retry-After", "Location"})


def inventory_view(runtime: Runtime, sku: str, location: str, state: dict[str, Any]) -> dict[str, Any]:
    agg = aggregate(state, runtime.buffers, runtime.settings.oversell_protection)
    body: dict[str, Any] = {
        "sku": sku,
        "location": location,
        "channels": channels_view(state, runtime.buffers),
        "totalOnHand": agg.total_on_hand,
        "totalReserved": agg.total_reserved,
        "buffer": agg.buffer,
        "atp": agg.atp,
        "expectedArrivals": expected_arrivals(state),
    }
    for enrich in runtime.inventory_hooks.view_enrichers:
        body.update(enrich(sku, location, agg.atp))
    return body


def register(runtime: Runtime) -> None:
    app = runtime.app
    install_json_errors(app.web.web_app, runtime.metrics)  # type: ignore[attr-defined]
    FOREGROUND.most = runtime.settings.web_first_ms / 1000
    if FOREGROUND.most > 0:
        install_foreground(FOREGROUND)  # web requests first (stream_app.pacing)

    watch = watch_of(app)

    @app.task
    async def event_loop_lag() -> None:
        await runtime.metrics.watch_loop_lag()

    def stalls() -> dict[str, float]:
        now = asyncio.get_running_loop().time()
        return watch.stalls(now, runtime.settings.stall_seconds)

    @app.page("/health")
    class Health(ApiView):
        async def get(self, request: Request) -> Response:
            stalled = stalls()
            ready = is_ready(app) and not stalled
            assigned = sorted(
                tp.partition
                for tp in (app.assignor.assigned_actives() if app.consumer else set())
                if tp.topic == runtime.inventory.changelog_topic
            )
            body: dict[str, Any] = {
                "live": True, "ready": ready, "appId": runtime.settings.app_id,
                "partitions": assigned,
            }
            if stalled:
                body["stalled"] = {where: round(s, 1) for where, s in sorted(stalled.items())}
                body["reason"] = "outputs not taken by the broker for " + ", ".join(
                    f"{where} ({s:.0f}s)" for where, s in sorted(stalled.items())
                )
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(ApiView):
        async def get(self, request: Request) -> Response:
            metrics = runtime.metrics
            now = asyncio.get_running_loop().time()
            metrics.stalled.clear()
            for where, seconds in watch.stalls(now, 0.0).items():
                metrics.stalled.labels(where).set(seconds)
            metrics.ready.set(1 if is_ready(app) and not stalls() else 0)
            sync = runtime.sync
            if sync is not None:
                metrics.dirty_keys.set(sync.dirty_count())
            metrics.table_keys.clear()
            active = app.assignor.assigned_actives() if app.consumer else set()
            for table in app.tables.values():
                changelog = table.changelog_topic.get_topic_name()
                mine = {tp.partition for tp in active if tp.topic == changelog}
                metrics.table_keys.labels(table.name).set(estimated_keys(table, mine))
            metrics.consumer_lag.clear()
            for (topic, partition), behind in consumer_lag(app).items():
                metrics.consumer_lag.labels(topic, str(partition)).set(behind)
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/")
    class Dashboard(ApiView):
        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD.read_text(encoding="utf-8"))

    @app.page("/inventory/{sku}/{location}")
    class Inventory(ApiView):
        async def get(self, request: Request, sku: str, location: str) -> Response:
            key = inventory_key(sku, location)
            table = runtime.inventory
            forwarded = await forward_to_owner(
                runtime, table.changelog_topic, table.partition_of(key), self.web, request
            )
            if forwarded is not None:
                return forwarded
            state = table.get(key)
            if state is None:
                return self.json(
                    {"error": "not_found", "message": f"no inventory for {sku} at {location}"},
                    status=404,
                )
            return self.json(inventory_view(runtime, sku, location, state))
