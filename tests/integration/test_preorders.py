"""Pre-orders against a real broker and one real worker process (shared by the module).

Each test uses its own SKUs, so the tests share the worker without sharing state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import urllib3

from stream_app.domain.ids import reservation_id
from stream_app.domain.priority import DEFAULT_TIER_SCORES
from stream_app.embedded import free_port
from stream_app.partitioning import partition_for
from tests.fixtures.kafka import KafkaCluster, Producer, consume, produce, topic_settings_env
from tests.fixtures.procs import (
    ID_SECRET,
    SERVICE,
    ProcessFactory,
    StreamAppProcess,
    http,
    wait_for,
)

pytestmark = pytest.mark.integration

LOC = "DC-1"


def ship(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def order(
    order_id: str, sku: str, tier: str = "STANDARD", quantity: int = 1, days: int = 30,
    location: str = LOC, **extra: Any,
) -> dict[str, Any]:
    return {
        "orderId": order_id, "customerId": f"c-{order_id}", "customerEmail": f"{order_id}@example.com",
        "customerTier": tier, "shipDate": ship(days), "source": "web",
        "items": [{"sku": sku, "productName": "Console", "quantity": quantity, "locationRef": location}],
        **extra,
    }


def stock(sku: str, on_hand: int, event_id: str | None = None, location: str = LOC,
          updated: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "eventId": event_id or uuid.uuid4().hex, "channel": "WMS", "sku": sku, "location": location,
        "onHand": on_hand, "reserved": 0, "updatedAt": updated,
    }


def expected(sku: str, ref: str, quantity: int, days: int, location: str = LOC) -> dict[str, Any]:
    return {
        "eventId": uuid.uuid4().hex, "type": "EXPECTED", "ref": ref, "sku": sku,
        "location": location, "quantity": quantity, "expectedOn": ship(days),
        "updatedAt": datetime.now(UTC).isoformat(),
    }


ADMIN_KEY = {"X-API-Key": "preorders-admin-key"}


def priority(entry: dict[str, Any]) -> tuple[int, int]:
    return (-DEFAULT_TIER_SCORES[entry["tier"]], entry["sequence"])


def assert_queue_consistent(entries: list[dict[str, Any]]) -> None:
    """Positions 1..n; RESERVED then WAITLISTED, each in priority order; with unit
    quantities the RESERVED set is exactly a prefix of the priority order."""
    assert [e["queuePosition"] for e in entries] == list(range(1, len(entries) + 1))
    statuses = [e["status"] for e in entries]
    n_reserved = statuses.count("RESERVED")
    assert statuses == ["RESERVED"] * n_reserved + ["WAITLISTED"] * (len(entries) - n_reserved)
    reserved, waitlisted = entries[:n_reserved], entries[n_reserved:]
    assert reserved == sorted(reserved, key=priority)
    assert waitlisted == sorted(waitlisted, key=priority)
    if reserved and waitlisted and all(e["quantity"] == 1 for e in entries):
        assert priority(reserved[-1]) < priority(waitlisted[0])
    ids = [e["reservationId"] for e in entries]
    assert len(ids) == len(set(ids))
    assert len({e["sequence"] for e in entries}) == len(entries)


@dataclass
class Cluster:
    workers: list[StreamAppProcess]
    bootstrap: str
    prefix: str

    @property
    def worker(self) -> StreamAppProcess:
        return self.workers[0]

    def topic(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def send(self, name: str, *values: Any) -> None:
        produce(self.bootstrap, self.topic(name), list(values))

    def set_stock(self, sku: str, on_hand: int, **kw: Any) -> None:
        self.send("inventory-changes", stock(sku, on_hand, **kw))
        wait_for(
            lambda: self.worker.get(f"/inventory/{sku}/{kw.get('location', LOC)}")[1].get("atp") is not None,
            30, 0.1, f"stock of {sku}",
        )

    def post_order(self, body: Any, worker: StreamAppProcess | None = None) -> tuple[int, Any]:
        return (worker or self.worker).post("/pre-orders", body)

    def queue(self, sku: str, days: int = 30, worker: StreamAppProcess | None = None,
              **query: Any) -> dict[str, Any]:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = (worker or self.worker).get(f"/queues/{sku}/{LOC}/{ship(days)}?{params}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def wait_queue(self, sku: str, check: Callable[[dict[str, Any]], bool], what: str,
                   days: int = 30, timeout: float = 60) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (lambda q: q if check(q) else None)(self.queue(sku, days, limit=10000)),
            timeout, 0.2, what,
        )

    def results(self, order_ids: set[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        """The latest pre-order-results value of each order id (read from the topic)."""
        records = consume(
            self.bootstrap, self.topic("pre-order-results"),
            lambda rs: order_ids <= {r.get("orderId") for r in rs}, timeout,
        )
        return {r["orderId"]: r for r in records if r.get("orderId") in order_ids}

    def events(self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict[str, Any]]:
        return consume(self.bootstrap, self.topic("reservation-events"), check, timeout)


def worker_env(kafka: KafkaCluster, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "STREAM_APP_KAFKA_BROKER": kafka.bootstrap,
        "STREAM_APP_APP_ID": prefix,
        "STREAM_APP_PARTITIONS": "4",
        "STREAM_APP_FLUENT_SIM_PORT": str(free_port()),
        "STREAM_APP_PRE_ORDER_WAIT_SECONDS": "10",
        "STREAM_APP_ADMIN_API_KEY": ADMIN_KEY["X-API-Key"],
        # SKUs named EXACT-* are not overbooked (easier arithmetic in some tests)
        "STREAM_APP_OVERBOOKING_RATES": '{"EXACT-*": 1.0}',
        **topic_settings_env(prefix),
        **extra,
    }


@pytest.fixture(scope="module")
def cluster(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    prefix = f"po-{uuid.uuid4().hex[:6]}"
    factory = ProcessFactory(tmp_path_factory.mktemp("preorders"))
    worker = factory.start("worker", factory.env(worker_env(kafka, prefix)))
    try:
        worker.wait_ready(90)
        yield Cluster([worker], kafka.bootstrap, prefix)
    finally:
        factory.stop_all()


# --- launches ---------------------------------------------------------------------------


def test_launch_vips_first_and_overbooking_exact(cluster: Cluster) -> None:
    sku = "LAUNCH-1"
    cluster.set_stock(sku, 100)  # 1.05 × 100 = 105 units promisable
    standard = [order(f"L-S{i}", sku) for i in range(150)]
    vip = [order(f"L-V{i}", sku, "VIP") for i in range(50)]
    cluster.send("pre-orders", *standard)  # the STANDARDs arrive first: VIPs must bump them
    cluster.send("pre-orders", *vip)
    ids = {o["orderId"] for o in standard + vip}
    results = cluster.results(ids)
    assert all(r["success"] for r in results.values())

    body = cluster.wait_queue(sku, lambda q: q["depth"] == 200, "200 queued")
    entries = body["entries"]
    assert_queue_consistent(entries)
    reserved = [e for e in entries if e["status"] == "RESERVED"]
    assert sum(e["quantity"] for e in reserved) == 105  # floor(1.05 × 100), exactly
    assert {e["orderId"] for e in reserved if e["tier"] == "VIP"} == {o["orderId"] for o in vip}
    std_reserved = sorted(e["sequence"] for e in reserved if e["tier"] == "STANDARD")
    std_waiting = sorted(e["sequence"] for e in entries if e["status"] == "WAITLISTED")
    assert len(std_reserved) == 55 and max(std_reserved) < min(std_waiting)  # by arrival

    status, atp = cluster.worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(30)}&quantity=1")
    assert status == 200
    assert atp["existingReservations"] == 105 and atp["availableToPromise"] == 0
    assert atp["overbookingLimit"] == 105 and atp["canFulfill"] is False
    assert atp["recommendation"] == "WAITLIST"

    bumped = cluster.events(lambda evs: sum(e["eventType"] == "BUMPED" and e["sku"] == sku for e in evs) >= 1)
    assert all(e["tier"] == "STANDARD" for e in bumped if e["eventType"] == "BUMPED")


def test_two_ship_dates_never_promise_a_unit_twice(cluster: Cluster) -> None:
    sku = "EXACT-DATES"
    cluster.set_stock(sku, 10)
    for i in range(10):  # the later date takes every unit
        status, result = cluster.post_order(order(f"D-late-{i}", sku, days=60))
        assert status == 200 and result["reservations"], result
    status, early = cluster.post_order(order("D-early-0", sku, days=30))
    assert status == 200 and early["waitlisted"] and not early["reservations"], early
    status, atp = cluster.worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(30)}")
    assert atp["availableToPromise"] == 0 and atp["existingReservations"] == 0
    status, atp60 = cluster.worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(60)}&quantity=2")
    assert atp60["existingReservations"] == 10 and atp60["canFulfill"] is False

    # an arrival before the early date promotes the waitlisted early item
    cluster.send("inventory-changes", expected(sku, "PO-77", 1, 20))
    rid = early["waitlisted"][0]["reservationId"]
    wait_for(lambda: cluster.worker.get(f"/reservations/{rid}")[1]["status"] == "RESERVED",
             30, 0.1, "promotion by new supply")
    events = cluster.events(lambda evs: any(e["eventType"] == "PROMOTED" and e["reservationId"] == rid for e in evs))
    assert any(e["eventType"] == "PROMOTED" and e["reservationId"] == rid for e in events)


def test_cancellation_promotes_first_waitlisted_by_priority(cluster: Cluster) -> None:
    sku = "EXACT-CANCEL"
    cluster.set_stock(sku, 2)
    decisions = {}
    for oid, tier in (("C-V1", "VIP"), ("C-V2", "VIP"), ("C-S3", "STANDARD"), ("C-V4", "VIP"), ("C-S5", "STANDARD")):
        status, result = cluster.post_order(order(oid, sku, tier))
        assert status == 200, result
        decisions[oid] = (result["reservations"] + result["waitlisted"])[0]
    assert [decisions[o]["status"] for o in ("C-V1", "C-V2", "C-S3", "C-V4", "C-S5")] == [
        "RESERVED", "RESERVED", "WAITLISTED", "WAITLISTED", "WAITLISTED"]
    before = cluster.queue(sku)["entries"]
    assert [e["orderId"] for e in before] == ["C-V1", "C-V2", "C-V4", "C-S3", "C-S5"]

    rid = decisions["C-V1"]["reservationId"]
    status, body = cluster.worker.post(f"/reservations/{rid}/cancel")
    assert status == 200 and body["reservation"]["status"] == "CANCELLED", body
    after = cluster.queue(sku)["entries"]
    assert [(e["orderId"], e["status"], e["queuePosition"]) for e in after] == [
        ("C-V2", "RESERVED", 1), ("C-V4", "RESERVED", 2), ("C-S3", "WAITLISTED", 3), ("C-S5", "WAITLISTED", 4)]
    v4 = decisions["C-V4"]["reservationId"]
    events = cluster.events(lambda evs: any(e["eventType"] == "PROMOTED" and e["reservationId"] == v4 for e in evs))
    assert not any(e["eventType"] == "PROMOTED" and e["sku"] == sku and e["reservationId"] != v4 for e in events)
    # idempotent: cancelling again changes nothing
    status, again = cluster.worker.post(f"/reservations/{rid}/cancel")
    assert status == 200 and again["reservation"]["status"] == "CANCELLED"
    assert [e["orderId"] for e in cluster.queue(sku)["entries"]] == ["C-V2", "C-V4", "C-S3", "C-S5"]

    # commit, then cancel by orderId through the topic
    status, committed = cluster.worker.post(f"/reservations/{v4}/commit")
    assert status == 200 and committed["reservation"]["committed"] is True
    cluster.send("reservation-commands", {"command": "cancel", "orderId": "C-V2"})
    cluster.wait_queue(sku, lambda q: [e["orderId"] for e in q["entries"]] == ["C-V4", "C-S3", "C-S5"]
                       and q["entries"][1]["status"] == "RESERVED", "cancel by order promotes S3")
    unknown = rid.rsplit("-", 1)[0] + "-" + "0" * 16
    status, missing = cluster.worker.post(f"/reservations/{unknown}/commit")
    assert status == 404


def test_duplicate_submission_same_result_no_new_reservation(cluster: Cluster) -> None:
    sku = "EXACT-DUP"
    cluster.set_stock(sku, 1)
    body = order("DUP-1", sku, "VIP")
    body["items"].append({"sku": "EXACT-DUP2", "quantity": 2, "locationRef": LOC})
    first_status, first = cluster.post_order(body)
    assert first_status == 200, first
    second_status, second = cluster.post_order(body)
    assert second_status == 200
    assert second == first
    secret = ID_SECRET.encode()  # keyed: nobody without the secret derives them
    assert first["reservations"][0]["reservationId"] == reservation_id("DUP-1", sku, LOC, 0, secret)
    assert first["waitlisted"][0]["reservationId"] == reservation_id("DUP-1", "EXACT-DUP2", LOC, 1, secret)
    assert first["reservations"][0]["reservationId"] != reservation_id("DUP-1", sku, LOC, 0)
    cluster.send("pre-orders", body)  # and a third time through the topic: one more result
    records = consume(cluster.bootstrap, cluster.topic("pre-order-results"),
                      lambda rs: sum(r.get("orderId") == "DUP-1" for r in rs) >= 3)
    same = [r for r in records if r.get("orderId") == "DUP-1"]
    assert all(r == first for r in same)
    assert cluster.queue(sku)["depth"] == 1
    assert cluster.queue("EXACT-DUP2")["depth"] == 1
    assert cluster.worker.get("/pre-orders/DUP-1") == (200, first)  # the collector's entry


def test_credentials_bounds_conflicts_and_json_errors(cluster: Cluster) -> None:
    """What a storefront and a stranger see: the service key is needed to place, cancel
    and commit and to see customer data; bounds and resends with other content are
    clear 4xx answers; every error, 404 and 405 included, is JSON with a code."""
    worker, sku = cluster.worker, "AUTH-1"
    cluster.set_stock(sku, 5)
    body = order("AUTH-O1", sku, quantity=2)
    for headers in ({}, {"X-API-Key": "guess"}):
        status, refused = worker.post("/pre-orders", body, headers=headers)
        assert status == 401 and refused["error"] == "unauthorized" and refused["reasons"], refused
    assert worker.post("/pre-orders", body, headers=ADMIN_KEY)[0] == 200  # the admin key too
    status, again = cluster.post_order(body)
    assert status == 200 and again["reservations"][0]["quantity"] == 2
    # a STANDARD told RESERVED is told too that a higher tier may still bump it
    assert again["reservations"][0]["provisional"] is True and again["reservations"][0]["tierRank"] == 3
    rid = again["reservations"][0]["reservationId"]

    status, conflict = cluster.post_order(order("AUTH-O1", sku, quantity=3))
    assert status == 409 and conflict["error"] == "conflict", conflict
    assert any("quantity was 2, now 3" in r for r in conflict["reasons"]), conflict
    assert cluster.queue(sku)["depth"] == 1

    status, anonymous = worker.get(f"/queues/{sku}/{LOC}/{ship(30)}", headers={})
    assert status == 200 and anonymous["entries"], anonymous
    assert all("customerEmail" not in e and "customerId" not in e for e in anonymous["entries"])
    assert cluster.queue(sku)["entries"][0]["customerEmail"] == "AUTH-O1@example.com"
    assert "customerEmail" not in worker.get(f"/reservations/{rid}", headers={})[1]
    assert "customerEmail" not in str(worker.get("/pre-orders/AUTH-O1", headers={})[1])
    assert worker.post(f"/reservations/{rid}/cancel", headers={})[0] == 401
    assert worker.post(f"/reservations/{rid}/commit", headers={})[0] == 401
    assert worker.get(f"/reservations/{rid}")[1]["status"] == "RESERVED"

    status, big = cluster.post_order(order("AUTH-BIG", sku, quantity=10**12))
    assert status == 400 and "quantity must be at most 10000" in big["message"], big
    status, long = cluster.post_order(order("x" * 201, sku))
    assert status == 400 and "orderId is longer than 200 characters" in long["reasons"], long
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    status, nested = cluster.post_order({**order("AUTH-DEEP", sku), "extra": deep})
    assert status == 400 and "nests deeper" in nested["message"], nested

    # GET /atp applies the intake's rules (its RESERVE means POST /pre-orders takes it)
    for query, reason in ((f"shipDate={ship(2)}", "too early"), (f"shipDate={ship(400)}", "too late"),
                          (f"shipDate={ship(30)}&quantity=1e23", "positive integer"),
                          (f"shipDate={ship(30)}&quantity={'9' * 40}", "positive integer"),
                          (f"shipDate={ship(30)}&quantity=10001", "at most 10000")):
        status, answer = worker.get(f"/atp/{sku}/{LOC}?{query}")
        assert status == 400 and reason in answer["message"], (query, answer)
    assert worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(30)}&quantity=1")[1]["recommendation"] == "RESERVE"

    for method, path, status, code in (("GET", "/no/such/endpoint", 404, "not_found"),
                                       ("DELETE", "/pre-orders", 405, "method_not_allowed"),
                                       ("GET", "/reservations/not-an-id", 404, "not_found")):
        got, answer = http(method, worker.url + path, headers=SERVICE)
        assert got == status and answer["error"] == code and answer["message"], (path, answer)


def test_seed_webhook_paths_answer_in_the_seed_shapes(cluster: Cluster) -> None:
    """SPEC section 7: POST /pre-order, /check-atp and /cancel-reservation keep working."""
    worker, sku = cluster.worker, "SEED-1"
    cluster.set_stock(sku, 2)
    status, atp = worker.post("/check-atp", {"sku": sku, "locationRef": LOC, "shipDate": ship(30)})
    assert status == 200 and atp["canFulfill"] is True and atp["requestedQuantity"] == 1, atp
    assert atp["recommendation"] == "Reservation can be fulfilled" and atp["locationRef"] == LOC
    assert set(atp) >= {"currentInventory", "expectedArrival", "totalExpected", "existingReservations",
                        "overbookingLimit", "availableToPromise", "duration", "timestamp"}
    status, short = worker.post("/check-atp", {"sku": sku, "locationRef": LOC, "shipDate": ship(30),
                                               "quantity": 5})
    assert short["recommendation"] == "Insufficient inventory (need 5, available 2)", short

    status, placed = worker.post("/pre-order", order("SEED-O1", sku))
    assert status == 200 and placed["success"] is True and placed["reservations"], placed
    assert set(placed) >= {"orderId", "reservations", "waitlisted", "failedItems", "message"}
    status, bad = worker.post("/pre-order", {**order("SEED-BAD", sku), "items": []})
    assert status == 400 and bad["success"] is False and "items" in bad["error"], bad
    assert worker.post("/pre-order", order("SEED-O2", sku), headers={})[0] == 401

    rid = placed["reservations"][0]["reservationId"]
    status, cancelled = worker.post("/cancel-reservation", {"reservationId": rid})
    assert status == 200 and cancelled == {
        "success": True, "reservationId": rid, "orderId": "SEED-O1", "reservationIds": [rid],
        "message": "Reservation cancelled successfully"}, cancelled
    assert worker.get(f"/reservations/{rid}")[1]["status"] == "CANCELLED"
    status, by_order = worker.post("/pre-order", order("SEED-O3", sku))
    status, cancelled = worker.post("/cancel-reservation", {"orderId": "SEED-O3"})
    assert status == 200 and cancelled["success"] and cancelled["orderId"] == "SEED-O3", cancelled
    status, unknown = worker.post("/cancel-reservation", {"orderId": "NEVER-PLACED"})
    assert status == 404 and "NEVER-PLACED" in unknown["error"], unknown
    status, missing = worker.post("/cancel-reservation", {})
    assert status == 400 and missing["success"] is False
    # the aliases' bodies have the pre-orders' bounds: depth, string length
    deep: Any = "x"
    for _ in range(40):
        deep = {"a": deep}
    status, nested = worker.post("/check-atp", {"sku": sku, "locationRef": LOC, "shipDate": ship(30), "x": deep})
    assert status == 400 and nested["success"] is False and "nests deeper" in nested["message"], nested
    status, long = worker.post("/cancel-reservation", {"orderId": "O" * 5000})
    assert status == 400 and "orderId is longer than" in long["error"], long


def test_above_capacity_it_answers_at_once_instead_of_queueing(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    """At most ``pre_order_max_in_flight`` POSTs are answered at once: the rest get 429
    with Retry-After at once; none takes longer than ``pre_order_wait_seconds`` (+ slack);
    a refused order was not placed, and sent again it is."""
    prefix = f"cap-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka, prefix, STREAM_APP_PRE_ORDER_MAX_IN_FLIGHT="2",
                     STREAM_APP_PRE_ORDER_WAIT_SECONDS="0.5")
    worker = processes.start("worker", processes.env(env))
    worker.wait_ready(90)
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock("CAP-1", 100)])
    wait_for(lambda: worker.get(f"/inventory/CAP-1/{LOC}")[0] == 200, 30, 0.2, "stock")

    def post(n: int) -> tuple[int, float, str | None]:
        started = time.monotonic()
        response = urllib3.request("POST", worker.url + "/pre-orders", retries=False, timeout=10,
                                   body=orjson.dumps(order(f"CAP-{n}", "CAP-1")),
                                   headers={**SERVICE, "Content-Type": "application/json"})
        return response.status, time.monotonic() - started, response.headers.get("Retry-After")

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(post, range(48)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 202, 429} and 429 in statuses, statuses
    assert all(retry == "1" for status, _, retry in answers if status == 429)
    assert max(took for _, took, _ in answers) < 0.5 + 0.5, sorted(took for _, took, _ in answers)[-5:]
    refused = [n for n, (status, _, _) in enumerate(answers) if status == 429]
    placed = [n for n, (status, _, _) in enumerate(answers) if status != 429]
    for n in placed:
        wait_for(lambda n=n: worker.get(f"/pre-orders/CAP-{n}")[0] == 200, 30, 0.1, f"CAP-{n}")
    assert all(worker.get(f"/pre-orders/CAP-{n}")[0] == 404 for n in refused)
    assert post(refused[0])[0] in (200, 202)  # sent again, it is placed


def test_behind_its_decisions_it_answers_202_at_once_and_decides_later(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    """Decisions running further behind their pre-orders than
    ``pre_order_shed_after_seconds`` (a backlog: above capacity): ``POST /pre-orders``
    answers 202 with the status URL and the reason as soon as the broker has the order,
    instead of holding the request in the queue; the order is decided all the same."""
    prefix = f"shed-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka, prefix, STREAM_APP_PRE_ORDER_SHED_AFTER_SECONDS="0.5")
    worker = processes.start("worker", processes.env(env))
    worker.wait_ready(90)
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock("SHED-1", 1_000_000)])
    wait_for(lambda: worker.get(f"/inventory/SHED-1/{LOC}")[0] == 200, 30, 0.2, "stock")
    status, body = worker.post("/pre-orders", order("SHED-0", "SHED-1"))
    assert status == 200 and body["success"], body  # not behind: it waits for the decision

    produce(kafka.bootstrap, f"{prefix}-pre-orders",
            [order(f"BACKLOG-{n}", "SHED-1") for n in range(12_000)])

    def behind() -> bool:  # the signal is smoothed over ~10 decisions: one late is no queue
        samples = worker.metrics()
        within = samples.get('stream_app_decision_seconds_bucket{le="1.0"}', 0.0)
        return samples.get("stream_app_decision_seconds_count", 0.0) - within >= 30

    wait_for(behind, 60, 0.05, "30 decisions more than 1 s behind their pre-orders")
    started = time.monotonic()
    status, body = worker.post("/pre-orders", order("SHED-1", "SHED-1"))
    took = time.monotonic() - started
    assert status == 202, body
    assert body["statusUrl"] == "/pre-orders/SHED-1" and "behind" in body["reason"], body
    assert took < 5, took  # the wait is 10 s: answered once the broker had it, not queued
    assert worker.metrics()["stream_app_pre_orders_shed_total"] >= 1
    decided = wait_for(lambda: (lambda got: got[1] if got[0] == 200 else None)(
        worker.get("/pre-orders/SHED-1")), 120, 0.2, "the shed order decided")
    assert decided["success"], decided


def test_invalid_orders_with_every_reason(cluster: Cluster) -> None:
    bad = order("BAD-1", "SKU-X", "GOLD", quantity=0, days=2)
    del bad["customerEmail"]
    status, body = cluster.post_order(bad)
    assert status == 400
    text = " ".join(body["reasons"])
    for part in ("customerEmail", "GOLD", "quantity must be a positive integer", "too early"):
        assert part in text, body
    status, body = cluster.post_order(b"{nope")
    assert status == 400 and body["reasons"] == ["body is not JSON"]
    status, body = cluster.post_order({"orderId": "BIG", "pad": "x" * 300_000})
    assert status == 413

    late = order("BAD-2", "SKU-X", days=400)
    cluster.send("pre-orders", late, b"not json at all", b"[1,2]")
    result = cluster.results({"BAD-2"})["BAD-2"]
    assert result["success"] is False and result["reservations"] == []
    assert "too late" in result["failedItems"][0]["reason"] and "too late" in result["message"]
    dead = consume(cluster.bootstrap, cluster.topic("pre-orders-dlq"),
                   lambda rs: {r.value for r in rs} >= {b"not json at all", b"[1,2]"}, raw=True)
    reasons = {r.value: dict(r.headers)["dlq-reason"].decode() for r in dead}
    assert reasons[b"not json at all"].startswith("not JSON")
    assert reasons[b"[1,2]"] == "not a JSON object"

    cluster.send("reservation-commands", {"command": "explode", "orderId": "X"},
                 {"command": "cancel", "reservationId": "R-nope"}, b"\xff")
    dead = consume(cluster.bootstrap, cluster.topic("reservation-commands-dlq"),
                   lambda rs: len(rs) >= 3, raw=True)
    assert {dict(r.headers)["dlq-reason"].decode() for r in dead} >= {
        "command must be 'cancel' or 'commit'", "reservationId is not a reservation id of this system"}


def test_atp_and_queue_endpoints(cluster: Cluster) -> None:
    sku = "EXACT-VIEW"
    cluster.set_stock(sku, 3)
    cluster.send("inventory-changes", expected(sku, "PO-1", 4, 25), expected(sku, "PO-2", 100, 90))
    wait_for(lambda: len(cluster.worker.get(f"/inventory/{sku}/{LOC}")[1]["expectedArrivals"]) == 2, 30, 0.1, "arrivals")
    for i in range(6):
        assert cluster.post_order(order(f"Q-{i}", sku, "VIP" if i == 5 else "STANDARD"))[0] == 200
    status, atp = cluster.worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(30)}&quantity=2")
    assert status == 200
    assert {k: atp[k] for k in ("currentInventory", "expectedArrival", "totalExpected",
                                "existingReservations", "overbookingLimit", "availableToPromise",
                                "canFulfill", "recommendation")} == {
        "currentInventory": 3, "expectedArrival": 4, "totalExpected": 7, "existingReservations": 6,
        "overbookingLimit": 7, "availableToPromise": 1, "canFulfill": False, "recommendation": "WAITLIST"}
    for bad in ("", "?shipDate=tomorrow", f"?shipDate={ship(30)}&quantity=0", f"?shipDate={ship(30)}&quantity=x"):
        assert cluster.worker.get(f"/atp/{sku}/{LOC}{bad}")[0] == 400

    entries = cluster.queue(sku)["entries"]
    assert entries[0]["orderId"] == "Q-5"  # the VIP first
    assert_queue_consistent(entries)
    for field in ("reservationId", "orderId", "sku", "location", "shipDate", "quantity", "tier",
                  "status", "sequence", "queuePosition", "expiresAt"):
        assert field in entries[0]
    page = cluster.queue(sku, limit=2, offset=3)
    assert [e["queuePosition"] for e in page["entries"]] == [4, 5] and page["depth"] == 6
    assert page["entries"] == entries[3:5]
    assert cluster.queue(sku, days=31)["entries"] == []
    assert cluster.worker.get(f"/queues/{sku}/{LOC}/not-a-date")[0] == 400

    rid = entries[0]["reservationId"]
    status, one = cluster.worker.get(f"/reservations/{rid}")
    assert status == 200 and one["queuePosition"] == 1 and one["orderId"] == "Q-5"
    assert cluster.worker.get("/reservations/garbage")[0] == 404
    assert cluster.worker.get(f"/reservations/{rid[:-4]}abcd")[0] == 404
    stored = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(cluster.worker.get("/pre-orders/Q-5")),
                      30, 0.1, "stored order result")
    assert stored["reservations"][0]["reservationId"] == rid
    assert cluster.worker.get("/pre-orders/never-seen")[0] == 404


def test_units_held_by_reservations(cluster: Cluster) -> None:
    """What the sellable quantity subtracts (ReservationStore.held_units), shown on the
    inventory view; a cancellation gives the unit back."""
    sku = "EXACT-HELD"
    cluster.set_stock(sku, 5)
    rids = []
    for i in range(3):
        status, result = cluster.post_order(order(f"H-{i}", sku, days=40 + i))
        assert status == 200
        rids.append(result["reservations"][0]["reservationId"])
    status, atp = cluster.worker.get(f"/atp/{sku}/{LOC}?shipDate={ship(60)}")
    assert atp["existingReservations"] == 3 and atp["availableToPromise"] == 2
    assert cluster.worker.get(f"/inventory/{sku}/{LOC}")[1]["preOrderHeldUnits"] == 3
    assert cluster.worker.post(f"/reservations/{rids[0]}/cancel")[0] == 200
    assert cluster.worker.get(f"/inventory/{sku}/{LOC}")[1]["preOrderHeldUnits"] == 2


def test_result_payload_shape(cluster: Cluster) -> None:
    sku = "EXACT-SHAPE"
    cluster.set_stock(sku, 5)
    status, result = cluster.post_order(order("SHAPE-1", sku, "platinum", quantity=2))
    assert status == 200
    assert set(result) >= {"orderId", "success", "reservations", "waitlisted", "failedItems", "message"}
    reservation = result["reservations"][0]
    assert reservation["tier"] == "PLATINUM" and reservation["queuePosition"] == 1
    assert reservation["expiresAt"].startswith(ship(23))
    event = cluster.events(lambda evs: any(e["orderId"] == "SHAPE-1" for e in evs))
    reserved = next(e for e in event if e["orderId"] == "SHAPE-1")
    assert set(reserved) >= {"eventType", "reservationId", "orderId", "customerId", "sku", "location",
                             "shipDate", "quantity", "tier", "sequence", "queuePosition", "at"}
    assert orjson.loads(orjson.dumps(reserved))["eventType"] == "RESERVED"


# --- where decisions happen and are stored ------------------------------------------------


def test_items_decided_where_they_arrive_and_stored_in_their_own_partition(
    cluster: Cluster,
) -> None:
    """An order arriving on the partition of its SKU is decided by the intake (no
    repartition hop); one arriving elsewhere is forwarded. Either way the reservation is
    stored in the changelog partition of its SKU/location (the intake writes under an
    event of that partition: a wrong partition would be lost on recovery)."""
    sku = "LOCAL-1"
    cluster.set_stock(sku, 10)
    own = partition_for(f"{sku}|{LOC}", 4)
    orders = [order(f"LOCAL-{p}", sku) for p in range(4)]  # one order per partition

    async def send() -> None:
        producer = Producer(cluster.bootstrap)
        await producer.start()
        try:
            for partition, body in enumerate(orders):
                key = str(body["orderId"]).encode()
                await producer.send(cluster.topic("pre-orders"), body, key, partition)
        finally:
            await producer.stop()

    asyncio.run(send())
    ids = {str(o["orderId"]) for o in orders}
    results = cluster.results(ids)
    assert all(r["success"] and len(r["reservations"]) == 1 for r in results.values()), results
    entries = cluster.wait_queue(sku, lambda q: len(q["entries"]) == 4, "4 reservations")[
        "entries"
    ]
    assert_queue_consistent(entries)

    def forwarded(records: list[Any]) -> set[str]:
        return {
            item["orderId"]
            for record in records
            if record.key == b"preorder-items"
            for item in orjson.loads(record.value)["items"]
            if item["orderId"] in ids
        }

    items = consume(
        cluster.bootstrap,
        f"{cluster.prefix}-internal",
        lambda rs: len(forwarded(rs)) == 3,
        raw=True,
    )
    assert forwarded(items) == ids - {f"LOCAL-{own}"}

    rids = {e["reservationId"] for e in entries}

    def stored(records: list[Any]) -> dict[str, set[int]]:
        where: dict[str, set[int]] = {}
        for record in records:
            for rid in orjson.loads(record.value or b"{}"):
                if rid in rids:
                    where.setdefault(rid, set()).add(record.partition)
        return where

    chunks = consume(
        cluster.bootstrap,
        f"{cluster.prefix}-reservations-changelog",
        lambda rs: stored(rs).keys() == rids,
        raw=True,
    )
    assert all(partitions == {own} for partitions in stored(chunks).values()), stored(chunks)


def test_unreadable_internal_messages_are_dead_lettered(cluster: Cluster) -> None:
    """Internal topics are written by the app only, but a message it cannot read keeps
    its evidence in the dead-letter topic and the agents go on."""
    async def send() -> None:
        producer = Producer(cluster.bootstrap)
        await producer.start()
        try:
            internal = f"{cluster.prefix}-internal"
            await producer.send(internal, b"internal: not json", b"preorder-items", 0)
            await producer.send(internal, {"unexpected": 1}, b"preorder-decisions", 1)
            await producer.send(internal, b"internal: what kind", b"no-such-kind", 2)
        finally:
            await producer.stop()

    asyncio.run(send())
    dead = consume(
        cluster.bootstrap,
        cluster.topic("pre-orders-dlq"),
        lambda rs: {r.value for r in rs} >= {b"internal: not json", b'{"unexpected":1}'},
        raw=True,
    )
    reasons = {r.value: dict(r.headers)["dlq-reason"] for r in dead}
    assert b"internal item message" in reasons[b"internal: not json"]
    assert b"internal decision message" in reasons[b'{"unexpected":1}']
    unknown = consume(
        cluster.bootstrap,
        f"{cluster.prefix}-internal-dlq",
        lambda rs: b"internal: what kind" in {r.value for r in rs},
        raw=True,
    )
    assert any(b"unknown internal message kind" in dict(r.headers)["dlq-reason"] for r in unknown)
    sku = "AFTER-DLQ-1"  # and the agents still decide
    cluster.set_stock(sku, 5)
    status, body = cluster.post_order(order("AFTER-DLQ-O1", sku))
    assert status == 200 and body["success"] is True, body


def test_post_of_a_multi_item_order_across_partitions_waits_for_its_result(
    cluster: Cluster,
) -> None:
    """A single-item order is answered in-process by the worker that decides it; an order
    whose items live on several partitions is answered through the results follower,
    which starts on demand."""
    skus = ["MULTI-A"]
    n = 0
    while len(skus) < 2:
        n += 1
        candidate = f"MULTI-B{n}"
        if partition_for(f"{candidate}|{LOC}", 4) != partition_for(f"MULTI-A|{LOC}", 4):
            skus.append(candidate)
    for sku in skus:
        cluster.set_stock(sku, 3)
    body = order("MULTI-O1", skus[0])
    body["items"].append({"sku": skus[1], "productName": "Pad", "quantity": 1, "locationRef": LOC})
    status, result = cluster.post_order(body)
    assert status == 200, result
    assert result["success"] is True
    assert sorted(r["sku"] for r in result["reservations"]) == sorted(skus)
