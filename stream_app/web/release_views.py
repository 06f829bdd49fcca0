"""Release endpoints (issue 5), answered on any worker.

* ``POST /admin/release?date=YYYY-MM-DD`` (``X-API-Key``): release that date on every
  partition; 202 with the run id. ``POST /admin/expire``: the expiry check now.
  ``POST /admin/export``: the S3 export now (the scheduled one runs at ``export_cron``).
* ``GET /releases`` and ``GET /releases/{runId}``: run reports. Each worker holds the
  reports of the partitions it owns (``release_runs`` table), so the answering worker asks
  the others (``?scope=local``) and merges, as ``GET /sync`` does.
* ``GET /admin/release-state?scope=local`` (``X-API-Key``): this worker's reservations and
  run reports, what the exporting worker gathers.

The gathering and the export itself live in :mod:`agents.release_export` (the nightly
timer runs it too); these views only answer HTTP.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from agents.release_export import (
    export_now,
    gather_parts,
    local_parts,
    merged_runs,
    requested_only,
)
from stream_app.app import need
from stream_app.domain.release import merge_run_reports
from stream_app.exports import (
    ExportError,
)
from stream_app.web.sync_views import admin_allowed

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

LIST_DEFAULT = 20


def parse_release_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.release, "the release service").service

    def unauthorized(view: View) -> Response:
        return view.json({"error": "unauthorized", "message": "X-API-Key required"}, status=401)

    @app.page("/admin/release")
    class AdminRelease(View):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            release_date = parse_release_date(request.query.get("date"))
            if release_date is None:
                return self.json(
                    {"error": "bad_request", "message": "date=YYYY-MM-DD is required"}, status=400
                )
            run_id = await service.request_release(release_date, "manual")
            return self.json(
                {"runId": run_id, "releaseDate": release_date.isoformat(), "state": "requested",
                 "report": f"/releases/{run_id}"},
                status=202,
            )

    @app.page("/admin/expire")
    class AdminExpire(View):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            await service.request_expiry("manual")
            return self.json({"status": "expiry check requested"}, status=202)

    @app.page("/admin/export")
    class AdminExport(View):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            try:
                summary = await export_now(runtime)
            except ExportError as exc:
                return self.json({"error": "export_failed", "message": str(exc)}, status=502)
            return self.json(summary)

    @app.page("/admin/release-state")
    class ReleaseState(View):
        async def get(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            body = local_parts(runtime)
            body["reservations"] = service.local_reservations()
            return self.json(body)

    @app.page("/releases")
    class Releases(View):
        async def get(self, request: Request) -> Response:
            if request.query.get("scope") == "local":
                return self.json(local_parts(runtime))
            try:
                limit = max(1, min(500, int(request.query.get("limit", LIST_DEFAULT))))
            except ValueError:
                return self.json({"error": "bad_request", "message": "limit must be a number"},
                                 status=400)
            parts, missing = await gather_parts(runtime)
            runs = merged_runs(runtime, parts)
            return self.json({
                "runs": runs[:limit],
                "lastExport": service.last_export,
                "unreachableWorkers": missing,
            })

    @app.page("/releases/{run_id}")
    class ReleaseRun(View):
        async def get(self, request: Request, run_id: str) -> Response:
            if request.query.get("scope") == "local":
                return self.json(local_parts(runtime, run_id))
            parts, missing = await gather_parts(runtime, run_id)
            report = merge_run_reports(run_id, parts, runtime.settings.partitions)
            if report is None:
                report = requested_only(runtime, run_id)
            if report is None:
                return self.json(
                    {"error": "not_found", "message": f"no release run {run_id}"}, status=404
                )
            report["unreachableWorkers"] = missing
            return self.json(report)
