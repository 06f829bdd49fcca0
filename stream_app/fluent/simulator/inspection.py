"""What the ``/_sim/`` inspection routes show of the state (plain JSON lists and objects)."""

from __future__ import annotations

from typing import Any

from stream_app.fluent.simulator.common import iso
from stream_app.fluent.simulator.state import SimulatorState


def inventory_snapshot(state: SimulatorState) -> list[dict[str, Any]]:
    return [row.as_dict() for _, row in sorted(state.inventory.items())]


def batches_snapshot(state: SimulatorState) -> list[dict[str, Any]]:
    out = []
    for batch in state.batches.values():
        job = state.jobs[batch.job_id]
        out.append(
            {
                "id": batch.id,
                "jobId": batch.job_id,
                "status": batch.status,
                "entityCount": len(batch.entities),
                "failedCount": sum(1 for r in batch.results if r["responseCode"] != "200"),
                "preprocessing": job.preprocessing,
                "action": batch.action,
                "entityType": batch.entity_type,
                "source": batch.source,
                "createdOn": iso(batch.created_at),
            }
        )
    return out


def jobs_snapshot(state: SimulatorState) -> list[dict[str, Any]]:
    return [
        {
            **state.job_summary(job),
            "batchCount": len(job.batch_ids),
            "preprocessing": job.preprocessing,
        }
        for job in state.jobs.values()
    ]


def orders_snapshot(state: SimulatorState) -> list[dict[str, Any]]:
    return [
        {
            "id": o["id"],
            "ref": o["ref"],
            "type": o["type"],
            "status": o["status"],
            "items": o["input"]["items"],
            "createdOn": o["createdOn"],
        }
        for o in state.orders.values()
    ]


def events_snapshot(state: SimulatorState) -> list[dict[str, Any]]:
    """Every Event API call kept: ``eventId``, ``mode`` (async or sync), ``eventStatus``,
    ``receivedOn`` and the ``event`` as sent."""
    return list(state.events)


def faults_view(state: SimulatorState) -> dict[str, Any]:
    now = state.clock()
    return {
        "faults": [f.as_dict() for f in state.faults if f.active(now)],
        "recordErrors": state.record_errors,
    }


def calls_view(state: SimulatorState) -> dict[str, dict[str, int]]:
    """Fluent calls by path and HTTP status."""
    return {path: dict(by_status) for path, by_status in state.calls.items()}
