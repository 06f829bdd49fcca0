"""Nightly release, expiry, admin trigger and S3 export through real processes.

Broker (fixture), the Fluent simulator and ``stream-app worker`` run as real processes; the
export goes to a moto S3 server on loopback. Reservations come in through the
``pre-orders`` topic (keyed by SKU so that their arrival order is the order sent).
Tests of the shared worker use their own SKUs and ship dates; releases are asked for a
date through the admin endpoint ("ship date ≤ date"), so no test waits for 02:00.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import orjson
import pytest

from stream_app.domain.ids import reservation_id
from tests.fixtures.kafka import KafkaCluster, Producer, consume
from tests.fixtures.procs import ID_SECRET, ProcessFactory, StreamAppProcess, wait_for
from tests.fixtures.s3 import DUMMY_KEY_ID, DUMMY_SECRET, REGION
from tests.fixtures.simproc import ADMIN, Sim, start_sim, worker_env

pytestmark = pytest.mark.e2e

LOC = "DC-1"


def today() -> datetime:
    return datetime.now(UTC)


def ship(days: int) -> str:
    return (today().date() + timedelta(days=days)).isoformat()


def preorder(order_id: str, sku: str, tier: str, days: int, quantity: int = 1) -> dict[str, Any]:
    return {
        "orderId": order_id, "customerId": f"c-{order_id}", "customerEmail": f"{order_id}@example.com",
        "customerTier": tier, "shipDate": ship(days), "source": "web",
        "items": [{"sku": sku, "productName": "Console", "quantity": quantity, "locationRef": LOC}],
    }


def stock(sku: str, on_hand: int) -> dict[str, Any]:
    return {
        "eventId": uuid.uuid4().hex, "channel": "WMS", "sku": sku, "location": LOC,
        "onHand": on_hand, "reserved": 0, "updatedAt": datetime.now(UTC).isoformat(),
    }


def rid(order_id: str, sku: str) -> str:
    return reservation_id(order_id, sku, LOC, 0, ID_SECRET.encode())


def ref(order_id: str, sku: str) -> str:
    return "PO-" + rid(order_id, sku)


def send_in_order(bootstrap: str, topic: str, values: list[Any], key: str) -> None:
    """One key → one partition → the app sees them in this order."""

    async def main() -> None:
        producer = Producer(bootstrap)
        await producer.start()
        try:
            for value in values:
                await producer.send(topic, value, key=key.encode())
        finally:
            await producer.stop()

    asyncio.run(main())


@dataclass
class App:
    kafka: KafkaCluster
    sim: Sim
    worker: StreamAppProcess
    app_id: str

    def send(self, name: str, values: list[Any], key: str) -> None:
        send_in_order(self.kafka.bootstrap, f"{self.app_id}-{name}", values, key)

    def set_stock(self, sku: str, on_hand: int) -> None:
        self.send("inventory-changes", [stock(sku, on_hand)], sku)
        wait_for(
            lambda: self.worker.get(f"/inventory/{sku}/{LOC}")[1].get("totalOnHand") == on_hand,
            30, 0.1, f"stock of {sku} = {on_hand}",
        )

    def status(self, reservation: str) -> str | None:
        code, body = self.worker.get(f"/reservations/{reservation}")
        return body.get("status") if code == 200 else None

    def reservation(self, reservation: str) -> dict[str, Any]:
        code, body = self.worker.get(f"/reservations/{reservation}")
        assert code == 200, body
        return body  # type: ignore[no-any-return]

    def wait_statuses(self, expected: dict[str, str], timeout: float = 60) -> None:
        def check() -> bool:
            return all(self.status(r) == s for r, s in expected.items())

        try:
            wait_for(check, timeout, 0.2, "reservation statuses")
        except AssertionError:
            actual = {r: self.status(r) for r in expected}
            raise AssertionError(f"expected {expected}\nactual   {actual}") from None

    def reserve_all(self, skus: list[str], per_sku: int, prefix: str, days: int) -> dict[str, str]:
        """``per_sku`` STANDARD pre-orders on each SKU (100 units each), all RESERVED;
        returns what a release confirms: every reservation id → CONFIRMED."""
        expected: dict[str, str] = {}
        for sku in skus:
            self.set_stock(sku, 100)
            orders = [f"{prefix}{i}-{sku}" for i in range(per_sku)]
            self.send("pre-orders", [preorder(o, sku, "STANDARD", days) for o in orders], sku)
            expected.update({rid(o, sku): "CONFIRMED" for o in orders})
        self.wait_statuses({r: "RESERVED" for r in expected})
        return expected

    def release(self, day: str) -> str:
        code, body = self.worker.post(f"/admin/release?date={day}", headers=ADMIN)
        assert code == 202, body
        return str(body["runId"])

    def report(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            code, body = self.worker.get(f"/releases/{run_id}")
            finished = ("completed", "completed_with_failures", "skipped")
            return body if code == 200 and body.get("state") in finished else None

        return wait_for(done, timeout, 0.2, f"release {run_id} finished")  # type: ignore[no-any-return]

    def orders(self) -> dict[str, dict[str, Any]]:
        listed = self.sim.get("/_sim/orders")
        refs = [o["ref"] for o in listed]
        assert len(refs) == len(set(refs)), "duplicate order refs in Fluent"
        return {o["ref"]: o for o in listed}

    def create_order_calls(self) -> int:
        calls = self.sim.get("/_sim/calls")
        return sum(calls.get("/graphql", {}).values())


def env_for(kafka: KafkaCluster, app_id: str, sim: Sim, **extra: str) -> dict[str, str]:
    return worker_env(
        kafka, app_id, sim,
        STREAM_APP_MIN_DAYS_AHEAD="0",
        STREAM_APP_EXPIRY_DAYS="0",  # expiresAt = shipDate 00:00 UTC
        STREAM_APP_FLUSH_INTERVAL_SECONDS="30",
        **extra,
    )


@pytest.fixture(scope="module")
def s3_bucket(s3_server: str) -> str:
    bucket = f"rel-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        session = aioboto3.Session(
            aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET, region_name=REGION
        )
        async with session.client("s3", endpoint_url=s3_server) as client:
            await client.create_bucket(Bucket=bucket)

    asyncio.run(create())
    return bucket


@pytest.fixture(scope="module")
def app(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory, s3_server: str, s3_bucket: str
) -> Iterator[App]:
    factory = ProcessFactory(tmp_path_factory.mktemp("release"))
    app_id = f"rel-{uuid.uuid4().hex[:6]}"
    try:
        sim = start_sim(factory)
        env = env_for(
            kafka, app_id, sim,
            STREAM_APP_S3_ENDPOINT_URL=s3_server, STREAM_APP_S3_BUCKET=s3_bucket,
            STREAM_APP_S3_REGION=REGION, STREAM_APP_AWS_ACCESS_KEY_ID=DUMMY_KEY_ID,
            STREAM_APP_AWS_SECRET_ACCESS_KEY=DUMMY_SECRET,
        )
        worker = factory.start("worker", factory.env(env))
        worker.wait_ready(90)
        yield App(kafka, sim, worker, app_id)
    finally:
        factory.stop_all()


def test_vip_first_then_arrival_rest_cancelled(app: App) -> None:
    days = 5
    a, b = "VIP-A", "VIP-B"
    app.set_stock(a, 4)  # limit floor(1.05 × 4) = 4 reservable
    app.set_stock(b, 10)
    # arrival order S1, S2, V1, S3, V2 (V2 bumps S3 to the waitlist), S4 waitlisted
    orders_a = [("S1", "STANDARD"), ("S2", "STANDARD"), ("V1", "VIP"), ("S3", "STANDARD"),
                ("V2", "VIP"), ("S4", "STANDARD")]
    app.send("pre-orders", [preorder(f"{o}-{a}", a, t, days) for o, t in orders_a], a)
    app.send("pre-orders", [preorder(f"B{i}", b, "STANDARD", days) for i in range(3)], b)
    app.wait_statuses({
        rid("S1-VIP-A", a): "RESERVED", rid("S2-VIP-A", a): "RESERVED", rid("V1-VIP-A", a): "RESERVED",
        rid("S3-VIP-A", a): "WAITLISTED", rid("V2-VIP-A", a): "RESERVED", rid("S4-VIP-A", a): "WAITLISTED",
        **{rid(f"B{i}", b): "RESERVED" for i in range(3)},
    })
    app.set_stock(a, 3)  # supply shrinks before the release: 4 reserved, 3 units

    code, dry = app.worker.post(f"/admin/release?date={ship(days)}&dryRun=true", headers=ADMIN)
    assert code == 200 and dry["dryRun"] is True, dry
    assert dry["plan"]["byTier"]["VIP"] == {"ordered": 2, "units_ordered": 2}
    assert dry["plan"]["byTier"]["STANDARD"] == {
        "ordered": 4, "units_ordered": 4,
        "cancelled_insufficient_inventory": 1, "units_cancelled_insufficient_inventory": 1,
        "cancelled_not_allocated": 2, "units_cancelled_not_allocated": 2,
    }
    assert app.reservation(rid("S2-VIP-A", a))["status"] == "RESERVED"  # a dry run changes nothing

    run_id = app.release(ship(days))
    report = app.report(run_id)
    app.wait_statuses({
        rid("V1-VIP-A", a): "CONFIRMED", rid("V2-VIP-A", a): "CONFIRMED",  # VIPs first
        rid("S1-VIP-A", a): "CONFIRMED",  # then by arrival
        rid("S2-VIP-A", a): "CANCELLED", rid("S3-VIP-A", a): "CANCELLED",
        rid("S4-VIP-A", a): "CANCELLED",
        **{rid(f"B{i}", b): "CONFIRMED" for i in range(3)},
    })
    assert app.reservation(rid("S2-VIP-A", a))["reason"] == "insufficient_inventory"
    assert app.reservation(rid("S3-VIP-A", a))["reason"] == "not_allocated"
    assert app.reservation(rid("S4-VIP-A", a))["reason"] == "not_allocated"

    confirmed = [ref("V1-VIP-A", a), ref("V2-VIP-A", a), ref("S1-VIP-A", a)] + [
        ref(f"B{i}", b) for i in range(3)
    ]
    orders = app.orders()
    ours = {r for r in orders if r in confirmed or "VIP" in r}
    assert set(confirmed) <= ours
    not_confirmed = [ref(o, a) for o in ("S2-VIP-A", "S3-VIP-A", "S4-VIP-A")]
    assert not set(not_confirmed) & set(orders)
    assert orders[ref("V1-VIP-A", a)]["items"][0]["quantity"] == 1

    assert report["state"] == "completed", report
    assert report["releaseDate"] == ship(days) and report["trigger"] == "manual"
    assert report["byTier"]["VIP"] == {"CONFIRMED": 2}
    assert report["byTier"]["STANDARD"] == {
        "CANCELLED_INSUFFICIENT_INVENTORY": 1, "CANCELLED_NOT_ALLOCATED": 2, "CONFIRMED": 4,
    }
    assert report["orders"]["created"] == 6 and report["orders"]["failed"] == 0
    assert report["durationSeconds"] is not None and report["partitionsDone"] == 4
    assert len(report["partitions"]) == 4


def test_confirmed_units_stay_held_until_the_stock_reflects_their_orders(app: App) -> None:
    """Issue 10: 20 confirmed against 20 units, then a 5-unit pre-order for the same date:
    it must not be promised (nor confirmed by the next release) while the warehouse feed
    still reports the 20 units that Fluent's orders will take."""
    days, sku = 7, "HOLD-1"
    app.set_stock(sku, 20)
    app.send("pre-orders", [preorder(f"H{i}", sku, "STANDARD", days) for i in range(20)], sku)
    app.wait_statuses({rid(f"H{i}", sku): "RESERVED" for i in range(20)})
    app.report(app.release(ship(days)))
    app.wait_statuses({rid(f"H{i}", sku): "CONFIRMED" for i in range(20)})
    held = app.worker.get(f"/inventory/{sku}/{LOC}")[1]
    assert held["preOrderHeldUnits"] == 20, held

    app.send("pre-orders", [preorder("LATE-5", sku, "STANDARD", days, quantity=5)], sku)
    app.wait_statuses({rid("LATE-5", sku): "WAITLISTED"})
    app.report(app.release(ship(days)))
    app.wait_statuses({rid("LATE-5", sku): "CANCELLED"})
    assert ref("LATE-5", sku) not in app.orders()  # 20 ordered against 20, not 25

    app.set_stock(sku, 0)  # the warehouse shipped them: stock newer than the confirmations
    wait_for(lambda: app.worker.get(f"/inventory/{sku}/{LOC}")[1]["preOrderHeldUnits"] == 0,
             30, 0.2, "confirmed units released once the stock reflects the orders")


def test_release_run_twice_creates_no_duplicates(app: App) -> None:
    days, sku = 6, "TWICE-1"
    app.set_stock(sku, 5)
    app.send("pre-orders", [preorder(f"T{i}", sku, "STANDARD", days) for i in range(4)], sku)
    app.wait_statuses({rid(f"T{i}", sku): "RESERVED" for i in range(4)})
    first = app.report(app.release(ship(days)))
    app.wait_statuses({rid(f"T{i}", sku): "CONFIRMED" for i in range(4)})
    assert first["orders"]["created"] >= 4
    orders_before = app.orders()
    calls_before = app.create_order_calls()

    second = app.report(app.release(ship(days)))
    assert second["runId"] != first["runId"]
    assert second["reservations"] == 0 and second["orders"]["toOrder"] == 0, second
    assert app.orders().keys() == orders_before.keys()
    assert app.create_order_calls() == calls_before
    assert all(app.status(rid(f"T{i}", sku)) == "CONFIRMED" for i in range(4))
    listed = app.worker.get("/releases")[1]["runs"]
    assert {first["runId"], second["runId"]} <= {r["runId"] for r in listed}


def test_fluent_failures_stay_release_failed_and_the_next_run_confirms(app: App) -> None:
    days, sku = 7, "FAIL-1"
    app.set_stock(sku, 5)
    app.send("pre-orders", [preorder(f"F{i}", sku, "STANDARD", days) for i in range(2)], sku)
    app.wait_statuses({rid(f"F{i}", sku): "RESERVED" for i in range(2)})
    app.sim.post("/_sim/faults", {"status": 503, "count": 100000, "path": "/graphql"})
    try:
        failed = app.report(app.release(ship(days)))
    finally:
        app.sim.clear_faults()
    assert failed["state"] == "completed_with_failures", failed
    assert failed["orders"]["failed"] == 2 and failed["totals"] == {"RELEASE_FAILED": 2}
    assert all("503" in f["error"] or "Unavailable" in f["error"] for f in failed["failures"])
    app.wait_statuses({rid(f"F{i}", sku): "RELEASE_FAILED" for i in range(2)})
    assert not {ref(f"F{i}", sku) for i in range(2)} & set(app.orders())

    retried = app.report(app.release(ship(days)))
    app.wait_statuses({rid(f"F{i}", sku): "CONFIRMED" for i in range(2)})
    assert retried["state"] == "completed" and retried["totals"] == {"CONFIRMED": 2}
    assert {ref(f"F{i}", sku) for i in range(2)} <= set(app.orders())


def test_admin_trigger_needs_the_key_and_a_date(app: App) -> None:
    worker = app.worker
    assert worker.post("/admin/release?date=2030-01-01")[0] == 401
    assert worker.post("/admin/release?date=2030-01-01", headers={"X-API-Key": "wrong"})[0] == 401
    assert worker.post("/admin/release?date=tomorrow", headers=ADMIN)[0] == 400
    assert worker.post("/admin/release?date=2030-02-30", headers=ADMIN)[0] == 400
    assert worker.post("/admin/release", headers=ADMIN)[0] == 400
    assert worker.post("/admin/expire")[0] == 401
    assert worker.post("/admin/export")[0] == 401
    assert worker.get("/admin/release-state")[0] == 401
    code, body = worker.post("/admin/release?date=2020-01-01", headers=ADMIN)  # all at once
    assert code == 400 and "outside the release window" in body["message"], body
    assert worker.post(f"/admin/release?date={ship(400)}", headers=ADMIN)[0] == 400
    assert worker.post(f"/admin/release?date={ship(1)}&dryRun=maybe", headers=ADMIN)[0] == 400
    early = ship(-14)  # the window's first day: nothing ships that early
    code, body = worker.post(f"/admin/release?date={early}&dryRun=true", headers=ADMIN)
    assert code == 200 and body["dryRun"] is True and body["plan"]["totals"] == {}, body
    assert worker.get("/releases")[1]["runs"] == [] or all(
        r["releaseDate"] != early for r in worker.get("/releases")[1]["runs"])  # nothing ran
    code, body = worker.post(f"/admin/release?date={early}", headers=ADMIN)
    assert code == 202 and body["releaseDate"] == early and body["plan"]["keys"] == 0
    report = app.report(body["runId"])
    assert report["reservations"] == 0 and report["partitionsDone"] == 4
    assert worker.get("/releases/rel-20200101-nope")[0] == 404
    log = worker.log_path.read_text()
    assert ADMIN["X-API-Key"] not in log


def test_expiry_of_uncommitted_reservations_promotes_the_waitlist(app: App) -> None:
    sku = "EXP-1"
    app.set_stock(sku, 2)  # limit floor(1.05 × 2) = 2
    # ship date today: expiresAt (shipDate − 0 days, 00:00 UTC) has passed, nobody committed
    app.send("pre-orders", [preorder(f"E{i}", sku, "STANDARD", 0) for i in range(2)]
             + [preorder("LATER", sku, "STANDARD", 12)], sku)
    app.wait_statuses({rid("E0", sku): "RESERVED", rid("E1", sku): "RESERVED",
                       rid("LATER", sku): "WAITLISTED"})
    code, _ = app.worker.post("/admin/expire", headers=ADMIN)
    assert code == 202
    app.wait_statuses({rid("E0", sku): "EXPIRED", rid("E1", sku): "EXPIRED",
                       rid("LATER", sku): "RESERVED"})
    assert app.reservation(rid("E0", sku))["reason"] == "not_committed"


def test_export_writes_reservations_and_reports_to_s3(app: App, s3_server: str, s3_bucket: str) -> None:
    days, sku = 9, "EXPORT-1"
    app.set_stock(sku, 1)
    app.send("pre-orders", [preorder("X-VIP", sku, "VIP", days), preorder("X-STD", sku, "STANDARD", days)], sku)
    app.wait_statuses({rid("X-VIP", sku): "RESERVED", rid("X-STD", sku): "WAITLISTED"})
    run_id = app.release(ship(days))
    app.report(run_id)
    code, summary = app.worker.post("/admin/export", headers=ADMIN)
    assert code == 200, summary
    assert summary["complete"] is True
    latest = f"s3://{s3_bucket}/stream-app/reservations/{ship(days)}/latest.json"
    report_uri = f"s3://{s3_bucket}/stream-app/releases/{ship(days)}/{run_id}.json"
    assert latest in summary["objects"] and report_uri in summary["objects"]

    async def read(key: str) -> Any:
        session = aioboto3.Session(
            aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET, region_name=REGION
        )
        async with session.client("s3", endpoint_url=s3_server) as client:
            obj = await client.get_object(Bucket=s3_bucket, Key=key)
            assert obj["ContentType"] == "application/json"
            return orjson.loads(await obj["Body"].read())

    document = asyncio.run(read(f"stream-app/reservations/{ship(days)}/latest.json"))
    assert document["shipDate"] == ship(days)
    by_status = {s: [r["reservationId"] for r in rs] for s, rs in document["byStatus"].items()}
    assert by_status == {"CANCELLED": [rid("X-STD", sku)], "CONFIRMED": [rid("X-VIP", sku)]}
    assert document["summary"]["byStatusTier"] == {
        "CANCELLED": {"STANDARD": {"count": 1, "units": 1}},
        "CONFIRMED": {"VIP": {"count": 1, "units": 1}},
    }
    report = asyncio.run(read(f"stream-app/releases/{ship(days)}/{run_id}.json"))
    assert report["runId"] == run_id and report["byTier"]["VIP"] == {"CONFIRMED": 1}
    assert report["byTier"]["STANDARD"] == {"CANCELLED_NOT_ALLOCATED": 1}
    assert app.worker.get("/releases")[1]["lastExport"]["objects"] == summary["objects"]


@pytest.mark.parametrize("discard", [
    "false",
    # a rebuild from the changelog alone is also checked by test_retention (make test);
    # this variant runs in make test-all (keeps make test under 10 minutes)
    pytest.param("true", marks=pytest.mark.slow),
], ids=["local-state-kept", "rebuilt-from-changelog"])
def test_worker_killed_mid_release_converges_without_duplicates(
    kafka: KafkaCluster, app: App, tmp_path: Path, discard: str
) -> None:
    """With its local tables kept (replays rewrite them) or discarded (rebuilt from the
    changelogs at start-up: commands fetched at the end of that recovery were lost before
    stream_app.broker.flow_control)."""
    factory = ProcessFactory(tmp_path)
    app_id = f"relkill-{uuid.uuid4().hex[:6]}"
    try:
        env = factory.env(
            env_for(
                kafka,
                app_id,
                app.sim,
                STREAM_APP_RELEASE_ORDER_CONCURRENCY="2",
                STREAM_APP_RELEASE_ORDERS_PER_REQUEST="2",
                STREAM_APP_DISCARD_LOCAL_STATE_AFTER_CRASH=discard,
            )
        )
        worker = factory.start("worker", env)
        worker.wait_ready(90)
        mine = App(kafka, app.sim, worker, app_id)
        days, per_sku = 4, 20
        skus = [f"KILL-{discard}-{name}" for name in "ABC"]  # the simulator is shared
        expected = mine.reserve_all(skus, per_sku, "K", days)
        refs = {"PO-" + r for r in expected}
        app.sim.post("/_sim/faults", {"latency": 0.25, "count": 100000, "path": "/graphql"})
        mine.release(ship(days))
        wait_for(lambda: len(refs & set(app.orders())) >= 6, 60, 0.1, "orders being created")
        worker.kill()
        assert len(refs & set(app.orders())) < len(refs), "release finished before the kill"
        app.sim.clear_faults()

        restarted = factory.start("worker", env)
        restarted.wait_ready(90)
        mine.worker = restarted
        mine.wait_statuses(expected, timeout=90)
        orders = app.orders()  # asserts unique refs
        assert refs <= set(orders)
        runs = restarted.get("/releases")[1]["runs"]
        manual = [r for r in runs if r["trigger"] == "manual"]
        assert manual and manual[0]["state"] == "completed", manual
        assert max(p["attempts"] for p in manual[0]["partitions"]) >= 2
        assert manual[0]["totals"] == {"CONFIRMED": len(expected)}
        # every CONFIRMED event was published at least once, whatever the kill interrupted
        consume(
            kafka.bootstrap, f"{app_id}-reservation-events",
            until=lambda got: {e["reservationId"] for e in got if e["eventType"] == "CONFIRMED"}
            >= set(expected),
            timeout=30,
        )
    finally:
        app.sim.clear_faults()
        factory.stop_all()


@pytest.mark.parametrize("fluent", ["slow", pytest.param("silent", marks=pytest.mark.slow)])
def test_a_rebalance_mid_release_yields_and_the_owner_resumes(
    kafka: KafkaCluster, app: App, tmp_path: Path, fluent: str
) -> None:
    """A second worker joins while a release runs against a slow Fluent (answers every
    second) or a silent one (no answer for minutes): the running release stops after its
    current group, or at once when nothing came back (the revoke waits for it), sends its
    command again, and the partitions' owners finish the run: every order once, every
    reservation CONFIRMED."""
    factory = ProcessFactory(tmp_path)
    app_id = f"relyield-{uuid.uuid4().hex[:6]}"
    try:
        base = env_for(
            kafka, app_id, app.sim,
            STREAM_APP_RELEASE_ORDER_CONCURRENCY="1", STREAM_APP_RELEASE_ORDERS_PER_REQUEST="2",
            STREAM_APP_FLUENT_TIMEOUT_SECONDS="60",  # silent: no error comes back either
        )
        w1 = factory.start("worker", factory.env(base))
        w1.wait_ready(90)
        mine = App(kafka, app.sim, w1, app_id)
        days, skus, per_sku = 4, [f"YIELD-{fluent}-{n}" for n in "ABC"], 12  # shared sim
        expected = mine.reserve_all(skus, per_sku, "Y", days)
        refs = {"PO-" + r for r in expected}
        # slow: 18 requests of 2 orders at 1 s each, so the run is still going when the
        # second worker has started and joined on a loaded machine (then Fluent is fast)
        latency = 1.0 if fluent == "slow" else 600.0
        app.sim.post("/_sim/faults", {"latency": latency, "count": 100000, "path": "/graphql"})
        run_id = mine.release(ship(days))
        if fluent == "slow":
            wait_for(lambda: len(refs & set(app.orders())) >= 2, 60, 0.1, "orders being created")
        else:
            wait_for(lambda: re.search(r"allocation stored, [1-9]\d* orders to create",
                                       w1.log_path.read_text()), 60, 0.1, "orders requested")
        w2 = factory.start("worker", factory.env(base))
        wait_for(lambda: "interrupted (a rebalance started)" in w1.log_path.read_text(), 60, 0.2,
                 "the running release yielding to the rebalance")
        app.sim.clear_faults()
        wait_for(lambda: w2.health()[0] == 200 and w1.health()[0] == 200, 90, 0.3, "both ready")
        mine.wait_statuses(expected, timeout=90)
        orders = app.orders()  # asserts unique refs
        assert refs <= set(orders)
        report = mine.report(run_id)
        assert report["state"] == "completed" and report["totals"] == {"CONFIRMED": len(expected)}
        assert max(p["attempts"] for p in report["partitions"]) >= 2, report["partitions"]
        events = consume(
            kafka.bootstrap, f"{app_id}-reservation-events",
            until=lambda got: {e["reservationId"] for e in got if e["eventType"] == "CONFIRMED"}
            >= set(expected),
            timeout=30,
        )
        contents: dict[str, bytes] = {}
        for event in events:
            raw = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
            assert contents.setdefault(event["eventId"], raw) == raw, event  # one content per id
    finally:
        app.sim.clear_faults()
        factory.stop_all()


def test_missed_night_is_caught_up_at_start_up(kafka: KafkaCluster, app: App, tmp_path: Path) -> None:
    if today().strftime("%m-%d") == "01-01":
        pytest.skip("the 'missed' schedule below is 1 January")
    factory = ProcessFactory(tmp_path)
    app_id = f"relcatch-{uuid.uuid4().hex[:6]}"
    try:
        base = env_for(kafka, app_id, app.sim, STREAM_APP_COMMIT_REQUIRED="false")
        # first life: the last scheduled release was on 1 January (caught up at start)
        env = factory.env(base, STREAM_APP_RELEASE_CRON="0 0 1 1 *")
        worker = factory.start("worker", env)
        worker.wait_ready(90)
        mine = App(kafka, app.sim, worker, app_id)
        first = wait_for(
            lambda: [r for r in worker.get("/releases")[1]["runs"] if r["trigger"] == "catch-up"
                     and r["state"] in ("completed", "skipped")],
            60, 0.2, "start-up catch-up of the first life",
        )
        assert first[0]["releaseDate"] == f"{today().year}-01-01"
        sku = "NIGHT-1"
        mine.set_stock(sku, 10)
        mine.send("pre-orders", [preorder(f"N{i}", sku, "STANDARD", 0) for i in range(3)], sku)
        mine.wait_statuses({rid(f"N{i}", sku): "RESERVED" for i in range(3)})
        worker.stop()

        # second life: a release was due at 00:00 today and nobody ran it
        env["STREAM_APP_RELEASE_CRON"] = "0 0 * * *"
        restarted = factory.start("worker", env)
        restarted.wait_ready(90)
        mine.worker = restarted
        mine.wait_statuses({rid(f"N{i}", sku): "CONFIRMED" for i in range(3)})

        def caught_up() -> list[dict[str, Any]]:  # the report follows the reservations
            runs = restarted.get("/releases")[1]["runs"]
            return [r for r in runs if r["trigger"] == "catch-up" and r["releaseDate"] == ship(0)
                    and r.get("totals") == {"CONFIRMED": 3}
                    and r["partitionsDone"] == r["partitionsTotal"]]  # the empty ones too

        caught = wait_for(caught_up, 30, 0.2, "the catch-up run's report: 3 CONFIRMED, all done")
        assert caught[0]["state"] == "completed", caught
        assert {"PO-" + rid(f"N{i}", sku) for i in range(3)} <= set(mine.orders())
    finally:
        factory.stop_all()


def test_two_workers_release_all_partitions_and_either_shows_the_report(
    kafka: KafkaCluster, app: App, tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    factory = ProcessFactory(tmp_path)
    app_id = f"reltwo-{uuid.uuid4().hex[:6]}"
    try:
        base = env_for(
            kafka, app_id, app.sim, STREAM_APP_COMMIT_REQUIRED="false",
            STREAM_APP_S3_ENDPOINT_URL=s3_server, STREAM_APP_S3_BUCKET=s3_bucket,
            STREAM_APP_S3_REGION=REGION, STREAM_APP_AWS_ACCESS_KEY_ID=DUMMY_KEY_ID,
            STREAM_APP_AWS_SECRET_ACCESS_KEY=DUMMY_SECRET, STREAM_APP_S3_PREFIX=f"{app_id}/",
        )
        w1 = factory.start("worker", factory.env(base))
        w1.wait_ready(90)
        w2 = factory.start("worker", factory.env(base))
        wait_for(lambda: w2.health()[0] == 200 and len(w1.health()[1]["partitions"]) < 4,
                 90, 0.3, "the second worker took partitions")
        w1.wait_ready(90)
        mine = App(kafka, app.sim, w1, app_id)
        days, skus = 3, [f"TWO-{i}" for i in range(8)]
        expected: dict[str, str] = {}
        for sku in skus:
            mine.set_stock(sku, 2)
            mine.send("pre-orders", [preorder(f"{sku}-{i}", sku, "STANDARD", days) for i in range(2)], sku)
            expected.update({rid(f"{sku}-{i}", sku): "CONFIRMED" for i in range(2)})
        mine.wait_statuses({r: "RESERVED" for r in expected})
        run_id = mine.release(ship(days))
        mine.wait_statuses(expected)
        owners = {w.url: set(w.health()[1]["partitions"]) for w in (w1, w2)}
        assert all(owners.values()), owners  # both workers own partitions
        reports = []
        for worker in (w1, w2):
            mine.worker = worker
            reports.append(mine.report(run_id))
        for report in reports:
            assert report["state"] == "completed" and report["partitionsDone"] == 4, report
            assert report["totals"] == {"CONFIRMED": len(expected)}
            assert len({p["worker"] for p in report["partitions"]}) == 2
        code, summary = w2.post("/admin/export", headers=ADMIN)
        assert code == 200 and summary["complete"] is True, summary
        assert summary["reservations"] == len(expected)
        assert {"PO-" + r for r in expected} <= set(app.orders())

        # the release's bulk writes recover from the changelog on another worker
        w1.stop()
        wait_for(lambda: len(w2.health()[1]["partitions"]) == 4, 90, 0.3, "w2 owns everything")
        w2.wait_ready(90)
        mine.worker = w2
        mine.wait_statuses(expected)
    finally:
        factory.stop_all()
