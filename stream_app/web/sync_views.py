"""``GET /sync``: dirty count, recent sync runs, today's Fluent job and errors, from every worker.

Each worker knows only its own flushes, so the answering worker asks the others
(``?scope=local``) and merges. ``POST /sync/flush`` (admin key) starts a flush now,
``?full=true`` a full resync. ``GET /sync/reconciliation``: the Fluent reconciliation runs
(agents.reconcile) with what every worker's partitions found; ``POST /sync/reconcile``
(admin key) starts one on this worker.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from agents.reconcile import merge as merge_reconciliation
from stream_app.app import need
from stream_app.cluster import fetch_json, other_workers
from stream_app.web.errors import ApiView, unauthorized

if TYPE_CHECKING:
    from stream_app.app import Runtime


def admin_allowed(runtime: Runtime, request: Request) -> bool:
    """Admin endpoints need the admin ``X-API-Key``; with no key configured they refuse
    everyone (stream_app.credentials)."""
    return runtime.credentials.is_admin(request.headers)


def merge(workers: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(
        (run for w in workers for run in w.get("runs", [])),
        key=lambda r: r.get("startedAt") or "",
        reverse=True,
    )
    errors = sorted(
        (e for w in workers for e in w.get("errors", [])),
        key=lambda e: e.get("at") or "",
        reverse=True,
    )
    jobs: dict[str, str] = {}
    for w in workers:
        jobs.update((w.get("fluent") or {}).get("jobs") or {})
    return {
        "dirty": sum(int(w.get("dirty", 0)) for w in workers),
        "jobs": jobs,
        "runs": runs[:20],
        "errors": errors[:20],
        "workers": workers,
    }


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.sync, "the sync service")
    reconciler = need(runtime.reconciler, "the reconciler")
    background: set[asyncio.Future[Any]] = set()

    @app.page("/sync")
    class Sync(ApiView):
        async def get(self, request: Request) -> Response:
            local = service.status()
            if request.query.get("scope") == "local":
                return self.json(local)
            others = other_workers(runtime)
            remote = (
                await asyncio.gather(
                    *(fetch_json(app.http_client, u, "/sync", seconds=3) for u in others)
                )
                if others
                else []
            )
            return self.json(merge([local, *remote]))

    @app.page("/sync/flush")
    class Flush(ApiView):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            if request.query.get("full") in ("1", "true", "yes"):
                service.request_full_resync()
            else:
                service.trigger.set()
            return self.json({"status": "flush requested"}, status=202)

    @app.page("/sync/reconciliation")
    class Reconciliation(ApiView):
        async def get(self, request: Request) -> Response:
            local = reconciler.status()
            if request.query.get("scope") == "local":
                return self.json(local)
            others = other_workers(runtime)
            remote = await asyncio.gather(
                *(fetch_json(app.http_client, u, "/sync/reconciliation", seconds=3) for u in others)
            )
            return self.json(merge_reconciliation([local, *remote]))

    @app.page("/sync/reconcile")
    class Reconcile(ApiView):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            run_id = f"rec-manual-{uuid.uuid4().hex[:8]}"
            task = asyncio.ensure_future(reconciler.run(run_id))
            background.add(task)
            task.add_done_callback(background.discard)
            return self.json({"status": "reconciliation started", "runId": run_id}, status=202)
