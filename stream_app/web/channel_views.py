"""``GET /channels``: every configured channel connector, from every worker.

A channel's poller runs on one worker (the owner of its partition); each worker reports
its own view (``?scope=local``) and the answering worker merges: per channel the view of
the worker where it is active (its file in progress, rows done, rejected, last poll,
errors), with the other workers' counters added.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from stream_app.app import need
from stream_app.cluster import fetch_json, other_workers
from stream_app.web.errors import ApiView

if TYPE_CHECKING:
    from stream_app.app import Runtime

Json = dict[str, Any]
SUMMED = ("filesIngested", "duplicatesSkipped", "rowsDone", "rejected")


def merge(workers: list[Json]) -> Json:
    """One entry per channel: the active worker's view, counters summed over workers."""
    merged: dict[str, Json] = {}
    for worker in workers:
        for view in worker.get("channels", []):
            name = view["name"]
            seen = merged.get(name)
            if seen is None:
                merged[name] = {**view, "owner": worker.get("url") if view.get("active") else None}
                continue
            totals = {k: int(seen.get(k) or 0) + int(view.get(k) or 0) for k in SUMMED}
            errors = sorted([*seen["errors"], *view["errors"]], key=lambda e: e.get("at") or "")[
                -20:
            ]
            if view.get("active"):
                merged[name] = {**view, "owner": worker.get("url")}
            merged[name].update(totals, errors=errors, lastError=errors[-1] if errors else None)
    unreachable = [w for w in workers if "unreachable" in w]
    return {"channels": list(merged.values()), "workers": len(workers), "unreachable": unreachable}


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.channels, "the channels service")

    @app.page("/channels")
    class Channels(ApiView):
        async def get(self, request: Request) -> Response:
            local = {
                "url": str(app.conf.canonical_url),
                "channels": [status.view() for status in service.status.values()],
            }
            if request.query.get("scope") == "local":
                return self.json(local)
            others = other_workers(runtime)
            remote = await asyncio.gather(
                *(fetch_json(app.http_client, u, "/channels", seconds=3) for u in others)
            )
            return self.json(merge([local, *remote]))
