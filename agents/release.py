"""Nightly release, expiry and the S3 export (issue 5): timers emit commands, agents apply them.

* Timers cannot write tables (FAUST-NOTES), so every state change travels as a command on
  the internal ``<app>-release-commands`` topic, ONE message per partition (sent with
  ``partition=p``), and the ``release-apply`` agent of the worker owning partition *p*
  applies it to the reservation books of *p* (the cached books of
  :class:`tables.reservations.ReservationStore`, the same objects the pre-order agents use).
* Emitters: the release crontab (``release_cron`` in ``release_timezone``, leader only:
  release date = today there), the start-up catch-up (leader: the due date of the most
  recent scheduled release; a partition whose last completed scheduled release is older
  releases it, which covers every earlier date), the hourly expiry crontab, and the admin
  endpoints of :mod:`stream_app.web.release_views`.
* A release of partition *p* for date *D* (crash-safe two-step, see
  :mod:`stream_app.domain.release`):

  1. ``expire`` (uncommitted past ``expiresAt``, any ship date, promoting later queues)
     then ``allocate_release`` on every book (CONFIRMING / CANCELLED), changed
     reservations written, CANCELLED/EXPIRED events queued; the agent then waits until
     those writes are on the broker, so no Fluent order ever exists for a reservation the
     table does not hold as CONFIRMING;
  2. ``createOrder`` for every CONFIRMING / RELEASE_FAILED reservation (deterministic ref
     ``PO-<reservationId>``; "already exists" is success), ``release_orders_per_request``
     aliased mutations per GraphQL request and ``release_order_concurrency`` requests at a
     time, the client retrying 429/5xx/timeouts with backoff; results are applied in
     small groups: CONFIRMED (+ event) or RELEASE_FAILED (retried by the next run). After
     ``release_fail_fast_after`` consecutive outages the run stops calling Fluent.

  A crash anywhere leaves CONFIRMING reservations; the redelivered command (or the next
  run) allocates nothing new for them and re-creates their orders, which Fluent answers
  "already exists": no duplicate order, none confirmed twice, none forgotten.
* Reports: ``release_runs`` table (:mod:`tables.releases`), one entry per run and partition.
* S3 export (``export_cron``, leader): the leader gathers every worker's reservations and
  run reports over the web view and writes one export
  (:func:`agents.release_export.export_now`, which explains why it gathers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import faust
import orjson

from agents.release_export import export_now
from stream_app.app import need
from stream_app.broker.lifecycle import is_ready
from stream_app.domain.ids import parse_iso

if TYPE_CHECKING:
    from stream_app.app import Runtime

log = logging.getLogger(__name__)

Json = dict[str, Any]

def register(runtime: Runtime) -> None:
    app, settings, names = runtime.app, runtime.settings, runtime.names
    service = need(runtime.release, "the release service").service
    tz = ZoneInfo(settings.release_timezone)

    @app.agent(runtime.topic(names.release_commands), name="release-apply")
    @runtime.metrics.counting_crashes("release-apply")
    async def release_apply(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                command = orjson.loads(event.value)
                if not isinstance(command, dict):
                    raise ValueError("not a JSON object")
            except (orjson.JSONDecodeError, ValueError, TypeError):
                log.warning("unreadable release command skipped")
                continue
            try:
                await service.apply(event.message.partition, command)
            except Exception:  # a bug must not stop the agent; the next run heals
                log.exception("release command %s failed", command.get("type"))

    @app.crontab(settings.release_cron, timezone=tz, on_leader=True)
    async def nightly_release() -> None:
        await service.request_release(service.today(), "nightly")

    @app.crontab(settings.expiry_check_cron, timezone=tz, on_leader=True)
    async def expiry_check() -> None:
        await service.request_expiry("hourly")

    @app.crontab(settings.export_cron, timezone=tz, on_leader=True)
    async def nightly_export() -> None:
        """Export, then prune what the export wrote and the retention lets go (with
        exports off, by age alone; after a failed or incomplete export, nothing)."""
        exported_at = None
        if settings.s3_bucket:
            try:
                summary = await export_now(runtime)
            except Exception:
                log.exception("scheduled S3 export failed: nothing is pruned tonight")
                return
            if not summary.get("complete"):
                log.warning("the S3 export was incomplete: nothing is pruned tonight")
                return
            exported_at = parse_iso(str(summary["generatedAt"]))
        await service.request_prune(exported_at, "nightly")

    @app.task
    async def leader_start_up() -> None:
        """Catch up a missed night when this worker is (or becomes) the leader."""
        was_leader = False
        try:
            while True:
                await asyncio.sleep(1.0)
                if not is_ready(app):
                    continue
                leader = app.is_leader()
                if leader and not was_leader:
                    try:
                        await service.start_up_checks()
                    except Exception:
                        log.exception("start-up release catch-up failed (retried soon)")
                        continue
                was_leader = leader
        finally:  # the task is cancelled when the worker stops
            await service.close()
