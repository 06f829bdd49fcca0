"""Retention on a real worker and broker: a prune command removes the finished
reservations (and order results) it covers with tombstones and nothing else; a worker
rebuilt from the changelog alone has the same state."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.fixtures.kafka import KafkaCluster, produce
from tests.fixtures.procs import ProcessFactory, StreamAppProcess, wait_for
from tests.integration.test_preorders import LOC, order, stock, worker_env

pytestmark = pytest.mark.e2e

PARTITIONS = 4


def prune(bootstrap: str, app_id: str, before: datetime) -> None:
    """What the leader's nightly export broadcasts (agents.release_service.ReleaseService.request_prune)."""
    command = orjson.dumps({"type": "prune", "before": before.isoformat(), "trigger": "test"})

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for partition in range(PARTITIONS):
                await producer.send_and_wait(f"{app_id}-release-commands", command, partition=partition)
        finally:
            await producer.stop()

    asyncio.run(main())


def pruned(worker: StreamAppProcess, table: str) -> float:
    return worker.metrics().get(f'stream_app_pruned_total{{table="{table}"}}', 0.0)


def test_prune_removes_finished_reservations_only_and_a_rebuild_agrees(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    prefix = f"ret-{uuid.uuid4().hex[:6]}"
    base = worker_env(kafka, prefix)
    worker = processes.start("worker", processes.env(base))
    worker.wait_ready(90)
    skus = [f"RET-{i}" for i in range(6)]
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock(sku, 5) for sku in skus])
    wait_for(lambda: all(worker.get(f"/inventory/{s}/{LOC}")[0] == 200 for s in skus), 30, 0.2, "stock")
    rids: dict[str, list[str]] = {}
    for sku in skus:
        for n in range(3):
            status, result = worker.post("/pre-orders", order(f"{sku}-o{n}", sku))
            assert status == 200 and result["reservations"], result
            rids.setdefault(sku, []).append(result["reservations"][0]["reservationId"])
    multi = order("MULTI-1", skus[0])  # order results are kept for multi-item orders
    multi["items"].append({**multi["items"][0], "sku": skus[1]})
    status, result = worker.post("/pre-orders", multi)
    assert status == 200 and len(result["reservations"]) == 2, result
    cancelled = [rids[sku][0] for sku in skus]  # the first of each queue: not its last
    for rid in cancelled:
        assert worker.post(f"/reservations/{rid}/cancel")[0] == 200
    kept = [rid for sku in skus for rid in rids[sku][1:]]

    prune(kafka.bootstrap, prefix, datetime.now(UTC) - timedelta(days=1))  # too old: nothing
    wait_for(lambda: pruned(worker, "reservations") == 0 and pruned(worker, "order_results") == 0
             and worker.metrics().get('stream_app_pruned_total{table="reservations"}') is not None,
             30, 0.2, "a prune that covers nothing")
    assert all(worker.get(f"/reservations/{rid}")[0] == 200 for rid in cancelled)

    prune(kafka.bootstrap, prefix, datetime.now(UTC) + timedelta(days=1))
    wait_for(lambda: pruned(worker, "reservations") == len(cancelled), 30, 0.2, "reservations pruned")
    wait_for(lambda: pruned(worker, "order_results") == 1, 30, 0.2, "the order result pruned")
    assert all(worker.get(f"/reservations/{rid}")[0] == 404 for rid in cancelled)
    before = {rid: worker.get(f"/reservations/{rid}")[1] for rid in kept}
    assert all(body["status"] == "RESERVED" for body in before.values())
    prune(kafka.bootstrap, prefix, datetime.now(UTC) + timedelta(days=1))  # a replay: nothing more
    worker.stop()

    rebuilt = processes.start("worker", processes.env(base))  # an empty data dir
    rebuilt.wait_ready(120)
    wait_for(lambda: all(rebuilt.get(f"/reservations/{rid}")[0] == 404 for rid in cancelled)
             and all(rebuilt.get(f"/reservations/{rid}") == (200, before[rid]) for rid in kept),
             60, 0.5, "the rebuilt worker agrees")
    assert pruned(rebuilt, "reservations") == 0  # the replayed prunes found nothing left
