"""Release endpoints (issue 5), answered on any worker.

* ``POST /admin/release?date=YYYY-MM-DD`` (``X-API-Key``): release that date on every
  partition; 202 with the run id. ``POST /admin/expire``: the expiry check now.
  ``POST /admin/export``: the S3 export now (the scheduled one runs at ``export_cron``).
* ``GET /releases`` and ``GET /releases/{runId}``: run reports. Each worker holds the
  reports of the partitions it owns (``release_runs`` table), so the answering worker asks
  the others (``?scope=local``) and merges, as ``GET /sync`` does.
* ``GET /admin/release-state?scope=local`` (``X-API-Key``): this worker's reservations and
  run reports, what the exporting worker gathers.

The export gathers rather than having each worker export its own partitions: the object
layout (one document per ship date with its summary, :mod:`stream_app.exports`) needs
every partition's reservations of a date in one document, and two workers writing the
same ``latest.json`` would overwrite each other. The leader gathers over HTTP with the
admin key; a worker it cannot reach makes the export ``complete: false`` (logged).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from faust.web import Request, Response, View
from yarl import URL

from stream_app.app import need
from stream_app.domain.release import merge_run_reports
from stream_app.domain.reservations import iso
from stream_app.exports import (
    ExportError,
    S3Config,
    export_release_report,
    export_reservations,
)
from stream_app.web.sync_views import admin_allowed, other_workers

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: run reports exported by each export (the runs requested in the last days)
EXPORT_RUN_DAYS = 7
LIST_DEFAULT = 20


def parse_release_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None


async def fetch_json(
    session: aiohttp.ClientSession, url: str, path: str, headers: dict[str, str] | None = None,
    seconds: float = 5.0,
) -> Json:
    try:
        async with session.get(
            URL(url).with_path(path).with_query(scope="local"),
            headers=headers or {},
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            if response.status != 200:
                return {"url": url, "unreachable": f"HTTP {response.status}"}
            body: Json = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"url": url, "unreachable": f"{type(exc).__name__}: {exc}"}


def local_parts(runtime: Runtime, run_id: str | None = None) -> Json:
    service = need(runtime.release, "agents.release").service
    parts = [
        p for p in service.runs.local_parts() if run_id is None or p.get("runId") == run_id
    ]
    return {
        "url": str(runtime.app.conf.canonical_url),
        "partitions": service.runs.owned_partitions(),
        "parts": parts,
    }


async def gather_parts(runtime: Runtime, run_id: str | None = None) -> tuple[list[Json], list[Json]]:
    """Partition reports from every worker; and the workers that did not answer."""
    path = "/releases" if run_id is None else f"/releases/{run_id}"
    others = other_workers(runtime)
    answers = await asyncio.gather(
        *(fetch_json(runtime.app.http_client, url, path) for url in others)
    ) if others else []
    parts = list(local_parts(runtime, run_id)["parts"])
    missing = []
    for answer in answers:
        if "unreachable" in answer:
            missing.append(answer)
        else:
            parts.extend(answer.get("parts") or [])
    return parts, missing


def merged_runs(runtime: Runtime, parts: list[Json]) -> list[Json]:
    partitions = runtime.settings.partitions
    run_ids = {str(p.get("runId")) for p in parts}
    reports = [merge_run_reports(run_id, parts, partitions) for run_id in run_ids]
    found = [r for r in reports if r is not None]
    return sorted(found, key=lambda r: str(r.get("requestedAt") or ""), reverse=True)


def requested_only(runtime: Runtime, run_id: str) -> Json | None:
    """A run requested through this worker that no partition picked up yet."""
    service = need(runtime.release, "agents.release").service
    command = service.requested.get(run_id)
    if command is None:
        return None
    return {
        "runId": run_id,
        "releaseDate": command["date"],
        "trigger": command["trigger"],
        "requestedAt": command["requestedAt"],
        "state": "requested",
        "partitionsTotal": runtime.settings.partitions,
        "partitionsDone": 0,
        "partitions": [],
    }


async def gather_state(runtime: Runtime) -> tuple[list[Json], list[Json], list[Json]]:
    """Every worker's reservations and run reports (for the export); and who failed."""
    service = need(runtime.release, "agents.release").service
    key = runtime.settings.admin_api_key.get_secret_value()
    reservations = service.local_reservations()
    parts = list(service.runs.local_parts())
    missing: list[Json] = []
    others = other_workers(runtime)
    if others and not key:
        missing = [{"url": u, "unreachable": "no admin key configured"} for u in others]
        others = []
    answers = await asyncio.gather(
        *(
            fetch_json(runtime.app.http_client, url, "/admin/release-state",
                       {"X-API-Key": key}, seconds=120)
            for url in others
        )
    ) if others else []
    for answer in answers:
        if "unreachable" in answer:
            missing.append(answer)
            continue
        reservations.extend(answer.get("reservations") or [])
        parts.extend(answer.get("parts") or [])
    return reservations, parts, missing


async def export_now(runtime: Runtime, now: datetime | None = None) -> Json:
    """Write the reservation export and recent run reports to S3; returns a summary."""
    service = need(runtime.release, "agents.release").service
    cfg = S3Config.from_settings(runtime.settings)
    if not cfg.enabled:
        raise ExportError("S3 export is disabled: no bucket configured (STREAM_APP_S3_BUCKET)")
    generated = now or datetime.now(UTC)
    reservations, parts, missing = await gather_state(runtime)
    uris = await export_reservations(cfg, reservations, generated_at=generated)
    since = iso(generated - timedelta(days=EXPORT_RUN_DAYS))
    runs = [
        r for r in merged_runs(runtime, parts)
        if str(r.get("requestedAt") or "") >= since and r["state"] != "skipped"
    ]
    for report in runs:
        uris.append(await export_release_report(cfg, report))
    summary = {
        "generatedAt": iso(generated),
        "bucket": cfg.bucket,
        "reservations": len(reservations),
        "releaseReports": len(runs),
        "objects": uris,
        "complete": not missing,
        "missingWorkers": missing,
    }
    if missing:
        log.warning("S3 export is incomplete: %d workers did not answer", len(missing))
    service.last_export = summary
    return summary


def register(runtime: Runtime) -> None:
    app = runtime.app
    service = need(runtime.release, "agents.release").service

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
