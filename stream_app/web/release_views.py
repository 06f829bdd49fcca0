"""Release endpoints (issue 5), answered on any worker.

* ``POST /admin/release?date=YYYY-MM-DD[&dryRun=true]`` (admin ``X-API-Key``): release
  that date on every partition (a date within ``release_window_days`` of today); 202
  with the run id and the plan (reservations and units by tier and outcome, summed over
  every worker's ``GET /admin/release-plan``); ``dryRun=true`` answers the plan only. ``POST /admin/expire``: the expiry check now.
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

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from agents.release_export import (
    export_now,
    gather_parts,
    local_parts,
    merged_runs,
    requested_only,
)
from stream_app.app import need
from stream_app.cluster import fetch_json, other_workers
from stream_app.credentials import KEY_HEADER
from stream_app.domain.release import merge_run_reports
from stream_app.exports import (
    ExportError,
)
from stream_app.web.errors import ApiView, error_body, parse_count, unauthorized
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


def checked_release_date(
    text: str | None, today: date, window_days: int
) -> tuple[date | None, list[str]]:
    """The date of a manual release, or why it is refused: it must be an ISO date at
    most ``window_days`` from ``today`` (a date far ahead would release every campaign)."""
    release_date = parse_release_date(text)
    if release_date is None:
        return None, ["date=YYYY-MM-DD is required"]
    earliest, latest = today - timedelta(days=window_days), today + timedelta(days=window_days)
    if not earliest <= release_date <= latest:
        return release_date, [
            f"date {release_date.isoformat()} is outside the release window "
            f"{earliest.isoformat()}..{latest.isoformat()} (STREAM_APP_RELEASE_WINDOW_DAYS="
            f"{window_days})"
        ]
    return release_date, []


def merge_previews(previews: list[Json]) -> Json:
    by_tier: dict[str, dict[str, int]] = {}
    for preview in previews:
        for tier, counts in (preview.get("byTier") or {}).items():
            into = by_tier.setdefault(tier, {})
            for outcome, n in counts.items():
                into[outcome] = into.get(outcome, 0) + int(n)
    totals: dict[str, int] = {}
    for counts in by_tier.values():
        for outcome, n in counts.items():
            totals[outcome] = totals.get(outcome, 0) + n
    return {
        "byTier": by_tier,
        "totals": totals,
        "keys": sum(int(p.get("keys") or 0) for p in previews),
        "unreachableWorkers": [p for p in previews if "unreachable" in p],
    }


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.release, "the release service").service

    @app.page("/admin/release")
    class AdminRelease(ApiView):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            now = datetime.now(UTC)
            release_date, reasons = checked_release_date(
                request.query.get("date"), now.date(), runtime.settings.release_window_days
            )
            dry_run = request.query.get("dryRun", "false").lower()
            if dry_run not in ("true", "false", "1", "0"):
                reasons.append("dryRun must be true or false")
            if release_date is None or reasons:
                return self.json(error_body(400, reasons), status=400)
            plan = await release_plan(request, release_date, now)
            if dry_run in ("true", "1"):
                return self.json({"dryRun": True, "releaseDate": release_date.isoformat(),
                                  "plan": plan})
            run_id = await service.request_release(release_date, "manual")
            return self.json(
                {"runId": run_id, "releaseDate": release_date.isoformat(), "state": "requested",
                 "report": f"/releases/{run_id}", "plan": plan},
                status=202,
            )

    async def release_plan(request: Request, release_date: date, now: datetime) -> Json:
        """Every worker's :meth:`ReleaseService.preview`, summed: what the release will do
        (reservations with a ship date up to ``release_date``), stated before it runs."""
        query = {"date": release_date.isoformat()}
        remote = await asyncio.gather(*(
            fetch_json(app.http_client, url, "/admin/release-plan",
                       {KEY_HEADER: request.headers.get(KEY_HEADER, "")},
                       seconds=3, query=query)
            for url in other_workers(runtime)
        ))
        return merge_previews([service.preview(release_date, now), *remote])

    @app.page("/admin/release-plan")
    class ReleasePlan(ApiView):
        async def get(self, request: Request) -> Response:
            """This worker's preview (``?scope=local``, what ``dryRun`` gathers)."""
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            release_date = parse_release_date(request.query.get("date"))
            if release_date is None:
                return self.json(error_body(400, ["date=YYYY-MM-DD is required"]), status=400)
            return self.json(service.preview(release_date, datetime.now(UTC)))

    @app.page("/admin/expire")
    class AdminExpire(ApiView):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            await service.request_expiry("manual")
            return self.json({"status": "expiry check requested"}, status=202)

    @app.page("/admin/export")
    class AdminExport(ApiView):
        async def post(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            try:
                summary = await export_now(runtime)
            except ExportError as exc:
                return self.json({"error": "export_failed", "message": str(exc)}, status=502)
            return self.json(summary)

    @app.page("/admin/release-state")
    class ReleaseState(ApiView):
        async def get(self, request: Request) -> Response:
            if not admin_allowed(runtime, request):
                return unauthorized(self)
            body = local_parts(runtime)
            body["reservations"] = service.local_reservations()
            return self.json(body)

    @app.page("/releases")
    class Releases(ApiView):
        async def get(self, request: Request) -> Response:
            if request.query.get("scope") == "local":
                return self.json(local_parts(runtime))
            asked = parse_count(request.query.get("limit"), LIST_DEFAULT, 1)
            if asked is None:
                return self.json(error_body(400, ["limit must be a positive integer"]), status=400)
            limit = min(500, asked)
            parts, missing = await gather_parts(runtime)
            runs = merged_runs(runtime, parts)
            return self.json({
                "runs": runs[:limit],
                "lastExport": service.last_export,
                "unreachableWorkers": missing,
            })

    @app.page("/releases/{run_id}")
    class ReleaseRun(ApiView):
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
