"""Delta sync end to end: broker, worker and the Fluent simulator as real processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stream_app.fluent.client import FluentClient, FluentConfig, InventoryRecord
from stream_app.fluent.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
)
from tests.fixtures.kafka import KafkaCluster, produce
from tests.fixtures.procs import ProcessFactory, StreamAppProcess, wait_for
from tests.fixtures.simproc import ADMIN, Sim, start_sim, worker_env

pytestmark = pytest.mark.e2e

def stock(i: int, sku: str, on_hand: int, reserved: int = 0, loc: str = "DC-1", minute: int = 0) -> dict[str, Any]:
    return {
        "eventId": f"{sku}-{i}", "channel": "WMS", "sku": sku, "location": loc, "onHand": on_hand,
        "reserved": reserved, "updatedAt": 1_795_000_000_000 + minute * 60_000 + i,
    }


@dataclass
class Setup:
    kafka: KafkaCluster
    sim: Sim
    worker: StreamAppProcess
    topic: str

    def send(self, events: list[Any]) -> None:
        produce(self.kafka.bootstrap, self.topic, events)

    def sync(self) -> dict[str, Any]:
        status, body = self.worker.get("/sync")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def converged(self, expected: dict[str, int]) -> bool:
        held = self.sim.inventory()
        return all(held.get(k) == v for k, v in expected.items())


@pytest.fixture(scope="module")
def setup(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    factory = ProcessFactory(tmp_path_factory.mktemp("sync"))
    app_id = f"sync-{uuid.uuid4().hex[:6]}"
    try:
        sim = start_sim(factory)
        worker = factory.start("worker", factory.env(worker_env(kafka, app_id, sim)))
        worker.wait_ready(90)
        yield Setup(kafka, sim, worker, f"{app_id}-inventory-changes")
    finally:
        factory.stop_all()


def test_simulator_holds_exactly_the_sellable_quantity(setup: Setup) -> None:
    events = [stock(i, f"A-{i}", 10 + i, reserved=i % 3) for i in range(20)]
    setup.send(events)
    expected = {f"A-{i}|DC-1": 10 + i - i % 3 for i in range(20)}
    wait_for(lambda: setup.converged(expected), 30, 0.2, "simulator converged")
    body = wait_for(
        lambda: (b := setup.worker.get("/inventory/A-5/DC-1")[1])["lastAccepted"] is not None and b,
        30, 0.1, "acceptance recorded",
    )
    assert body["sellable"] == body["lastAccepted"] == 13 and body["dirty"] is False

    # unchanged keys are never sent again: change one key, the next batch holds only it
    before = len(setup.sim.batches())
    setup.send([stock(100, "A-5", 50)])
    wait_for(lambda: setup.sim.inventory().get("A-5|DC-1") == 50, 30, 0.2, "update sent")
    new = setup.sim.batches()[before:]
    assert sum(b["entityCount"] for b in new) == 1
    assert all(not b["preprocessing"] for b in new)


def test_coalescing_many_events_few_records(setup: Setup, kafka: KafkaCluster, tmp_path: Path) -> None:
    # a long window, so that all events land inside it; then one flush is asked for
    factory = ProcessFactory(tmp_path)
    app_id = f"coal-{uuid.uuid4().hex[:6]}"
    try:
        worker = factory.start(
            "worker",
            factory.env(worker_env(kafka, app_id, setup.sim, STREAM_APP_FLUSH_INTERVAL_SECONDS="600")),
        )
        worker.wait_ready(90)
        events = [stock(i, f"C-{i % 100}", i, minute=i // 1000) for i in range(10_000)]
        produce(kafka.bootstrap, f"{app_id}-inventory-changes", events)
        last = {f"C-{i % 100}|DC-1": i for i in range(10_000)}
        def all_applied() -> bool:  # every key, not a sample: the flush must see final values
            return all(
                worker.get(f"/inventory/{key.split('|')[0]}/DC-1")[1].get("atp") == qty
                for key, qty in last.items()
            )

        wait_for(all_applied, 120, 0.5, "all events applied")
        before = len(setup.sim.batches())
        status, _ = worker.post("/sync/flush", headers=ADMIN)
        assert status == 202
        wait_for(lambda: setup.converged(last), 30, 0.2, "coalesced flush")
        sent = sum(b["entityCount"] for b in setup.sim.batches()[before:])
        assert sent <= 100, sent
        assert worker.post("/sync/flush")[0] == 401
    finally:
        factory.stop_all()


def test_fluent_down_then_recovers_without_losing_records(setup: Setup) -> None:
    setup.sim.post("/_sim/faults", {"status": 503, "count": 40, "path": "/api/v4.1/job"})
    setup.send([stock(i, f"D-{i}", 7 + i) for i in range(10)])
    wait_for(lambda: any(r["state"] == "failed" for r in setup.sync()["runs"]), 30, 0.2, "a failed run")
    body = setup.sync()
    assert body["dirty"] >= 1
    worker = body["workers"][0]
    assert worker["consecutiveFailures"] >= 1 and worker["fluent"]["client"]["retriesTotal"] >= 1
    assert body["errors"] and "Unavailable" in body["errors"][0]["error"]
    setup.sim.clear_faults()
    wait_for(lambda: setup.converged({f"D-{i}|DC-1": 7 + i for i in range(10)}), 60, 0.2, "recovered")
    wait_for(lambda: setup.sync()["dirty"] == 0, 30, 0.2, "nothing dirty")


def test_429_with_retry_after_is_honoured(setup: Setup) -> None:
    setup.sim.post("/_sim/faults", {"status": 429, "retryAfter": 1, "count": 2, "path": "/api/v4.1/job"})
    setup.send([stock(1, "R-1", 3)])
    wait_for(lambda: setup.converged({"R-1|DC-1": 3}), 30, 0.2, "sent after 429s")
    client = setup.sync()["workers"][0]["fluent"]["client"]
    assert client["lastBackoffSeconds"] >= 1.0


def test_token_expiry_mid_run_refreshes_and_continues(setup: Setup) -> None:
    setup.sim.post("/_sim/faults", {"expireTokens": True})
    setup.send([stock(1, "T-1", 9)])
    wait_for(lambda: setup.converged({"T-1|DC-1": 9}), 30, 0.2, "sent with a new token")


def test_per_record_errors_stay_dirty_and_are_reported(setup: Setup) -> None:
    setup.sim.post("/_sim/faults", {"recordErrors": {"E-BAD": "404"}})
    setup.send([stock(1, "E-BAD", 4), stock(1, "E-OK", 5)])
    wait_for(lambda: setup.converged({"E-OK|DC-1": 5}), 30, 0.2, "good record accepted")
    bad = wait_for(
        lambda: (b := setup.worker.get("/inventory/E-BAD/DC-1")[1]).get("syncFailures", 0) >= 1 and b,
        30, 0.2, "failure recorded",
    )
    assert bad["dirty"] is True and "404" in (bad["lastSyncError"] or "")
    assert "E-BAD|DC-1" not in setup.sim.inventory()
    assert any("E-BAD" in e["error"] for e in setup.sync()["errors"])
    setup.sim.clear_faults()
    wait_for(lambda: setup.converged({"E-BAD|DC-1": 4}), 60, 0.2, "retried after backoff")


def test_one_job_per_day_and_batches_within_limit(setup: Setup) -> None:
    # a flush of its own: with xdist this test may be the first of the module on its
    # worker (it read the jobs before any flush had made one)
    setup.send([stock(i, f"J-{i}", 2 + i) for i in range(3)])
    wait_for(lambda: setup.converged({f"J-{i}|DC-1": 2 + i for i in range(3)}), 30, 0.2, "sent")
    jobs = setup.sim.get("/_sim/jobs")
    delta_jobs = [j for j in jobs if not j["preprocessing"] and j["name"].startswith(setup.topic.split("-inventory")[0])]
    assert len(delta_jobs) == 1
    assert all(b["entityCount"] <= 500 for b in setup.sim.batches())


def test_bad_credentials_clear_error_and_no_retry_storm(kafka: KafkaCluster, tmp_path: Path) -> None:
    factory = ProcessFactory(tmp_path)
    try:
        sim = start_sim(factory)
        app_id = f"cred-{uuid.uuid4().hex[:6]}"
        worker = factory.start(
            "worker", factory.env(worker_env(kafka, app_id, sim, STREAM_APP_FLUENT_PASSWORD="wrong-password-123"))
        )
        worker.wait_ready(90)
        produce(kafka.bootstrap, f"{app_id}-inventory-changes", [stock(1, "X-1", 1)])

        def failed_run() -> dict[str, Any] | None:
            body = worker.get("/sync")[1]
            return body if any(r["state"] == "failed" for r in body["runs"]) else None

        body = wait_for(failed_run, 30, 0.2, "failed run")
        assert "FluentAuthError" in body["errors"][0]["error"]
        first = sim.token_calls()
        wait_for(lambda: "FluentAuthError" in worker.tail(200), 10, 0.2, "error in the log")
        # several 1-second flush windows later: no new attempt (backoff >= 30 s, no storm)
        wait_for(lambda: worker.get("/sync")[1]["workers"][0]["consecutiveFailures"] >= 1, 10, 0.2, "")
        import time

        deadline = time.monotonic() + 4  # four 1-second flush windows
        while time.monotonic() < deadline:
            assert sim.token_calls() <= first + 1
            time.sleep(0.5)
        log = worker.log_path.read_text()
        assert "wrong-password-123" not in log and "wrong-password-123" not in str(worker.get("/sync")[1])
    finally:
        factory.stop_all()


def test_kill_mid_flush_converges_after_restart(kafka: KafkaCluster, tmp_path: Path) -> None:
    factory = ProcessFactory(tmp_path)
    try:
        sim = start_sim(factory)
        app_id = f"kill-{uuid.uuid4().hex[:6]}"
        env = factory.env(worker_env(kafka, app_id, sim, STREAM_APP_BATCH_SIZE="50"))
        worker = factory.start("worker", env)
        worker.wait_ready(90)
        sim.post("/_sim/faults", {"latency": 0.5, "count": 1000, "path": "/api/v4.1/job/"})
        expected = {f"K-{i}|DC-1": 100 + i for i in range(300)}
        produce(kafka.bootstrap, f"{app_id}-inventory-changes", [stock(i, f"K-{i}", 100 + i) for i in range(300)])
        wait_for(lambda: len(sim.batches()) >= 1, 30, 0.1, "a flush under way")
        worker.kill()
        sim.clear_faults()
        restarted = factory.start("worker", env)
        restarted.wait_ready(90)
        wait_for(lambda: Setup(kafka, sim, restarted, "").converged(expected), 90, 0.3, "converged after restart")
        assert all(b["entityCount"] <= 50 for b in sim.batches())
        delta_jobs = [j for j in sim.get("/_sim/jobs") if not j["preprocessing"]]
        assert len(delta_jobs) == 1
    finally:
        factory.stop_all()


def test_full_resync_sends_every_key_with_preprocessing(setup: Setup) -> None:
    setup.send([stock(1, "F-1", 2)])
    wait_for(lambda: setup.converged({"F-1|DC-1": 2}), 30, 0.2, "F-1 sent")
    wait_for(lambda: setup.sync()["dirty"] == 0, 30, 0.2, "clean before resync")
    before = len(setup.sim.batches())
    assert setup.worker.post("/sync/flush?full=true", headers=ADMIN)[0] == 202
    wait_for(lambda: any(b["preprocessing"] for b in setup.sim.batches()[before:]), 30, 0.2, "resync batch")
    wait_for(
        lambda: any(r["fullResync"] and r["state"] == "completed" for r in setup.sync()["runs"]),
        30, 0.2, "resync run completed",
    )
    resync = [b for b in setup.sim.batches()[before:] if b["preprocessing"]]
    # every key this worker holds (C-* keys belong to the coalescing test's own app)
    known = [k for k in setup.sim.inventory() if not k.startswith("C-")]
    assert sum(b["entityCount"] for b in resync) == len(known)
    run = next(r for r in setup.sync()["runs"] if r["fullResync"])
    assert [h["state"] for h in run["history"]] == [
        "collecting", "creating_job", "sending_batches", "polling_batches", "completed",
    ]


def test_reconciliation_heals_what_another_system_changed_in_fluent(setup: Setup) -> None:
    setup.send([stock(i, f"REC-{i}", 30 + i) for i in range(5)])
    expected = {f"REC-{i}|DC-1": 30 + i for i in range(5)}
    wait_for(lambda: setup.converged(expected), 30, 0.2, "simulator converged")
    wait_for(lambda: setup.worker.get("/inventory/REC-4/DC-1")[1]["lastAccepted"] == 34, 30, 0.1, "accepted")

    # another Fluent client overwrites two positions behind the product's back
    async def tamper() -> None:
        config = FluentConfig(
            base_url=setup.sim.url, username=DEFAULT_USERNAME, password=SecretStr(DEFAULT_PASSWORD),
            client_id=DEFAULT_CLIENT_ID, client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
            retailer_id="1", job_name_prefix="someone-else",
        )
        async with FluentClient(config) as other:
            job = await other.ensure_job(datetime.now(UTC).date(), preprocessing=False)
            batch = await other.send_batch(job, [InventoryRecord("REC-1", "DC-1", 2), InventoryRecord("REC-3", "DC-1", 99)])
            await other.wait_batch(job, batch)

    asyncio.run(tamper())
    assert setup.sim.inventory()["REC-1|DC-1"] == 2

    code, body = setup.worker.post("/sync/reconcile", headers=ADMIN)
    assert code == 202, body
    run_id = body["runId"]
    assert setup.worker.post("/sync/reconcile")[0] == 401

    def reported() -> dict[str, Any] | None:
        runs = setup.worker.get("/sync/reconciliation")[1]["runs"]
        run = next((r for r in runs if r["runId"] == run_id), None)
        return run if run and run["state"] == "completed" and run["checked"] >= run["positions"] else None

    run = wait_for(reported, 60, 0.2, "reconciliation reported")
    assert run["drifted"] == 2, run
    assert {e["key"] for e in run["examples"]} == {"REC-1|DC-1", "REC-3|DC-1"}
    wait_for(lambda: setup.converged(expected), 30, 0.2, "drift healed by the next flush")
    assert setup.worker.metrics().get('stream_app_reconciled_positions_total{outcome="drift"}') == 2
