"""The release flow's view across workers: run reports and the nightly S3 export.

Each worker holds the reports of the partitions it owns (``release_runs``) and the
reservations of its books; the run listing and the export gather them from every worker
over HTTP (:mod:`stream_app.cluster`) and merge.

The export gathers rather than having each worker export its own partitions: the object
layout (one document per ship date with its summary, :mod:`stream_app.exports`) needs
every partition's reservations of a date in one document, and two workers writing the
same ``latest.json`` would overwrite each other. The leader gathers with the admin key; a
worker it cannot reach makes the export ``complete: false`` (logged).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stream_app.app import need
from stream_app.cluster import fetch_json, other_workers
from stream_app.domain.ids import iso
from stream_app.domain.release import merge_run_reports
from stream_app.exports import ExportError, S3Config, export_release_report, export_reservations

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: run reports exported by each export (the runs requested in the last days)
EXPORT_RUN_DAYS = 7


def local_parts(runtime: Runtime, run_id: str | None = None) -> Json:
    service = need(runtime.release, "the release service").service
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
    service = need(runtime.release, "the release service").service
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
    service = need(runtime.release, "the release service").service
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
    service = need(runtime.release, "the release service").service
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
