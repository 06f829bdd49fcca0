"""Two real workers: either answers every pre-order endpoint for any key (forwarding to the
owner), and a worker SIGKILLed during a burst then restarted loses no reservation,
duplicates none and keeps queue positions consistent."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import orjson
import pytest
import urllib3

from stream_app.partitioning import partition_for
from tests.fixtures.kafka import KafkaCluster, consume, produce
from tests.fixtures.procs import SERVICE, ProcessFactory, StreamAppProcess, wait_for
from tests.integration.test_preorders import (
    LOC,
    assert_queue_consistent,
    order,
    ship,
    stock,
    worker_env,
)

pytestmark = pytest.mark.e2e

PARTITIONS = 4
BURST = 2000


def partitions_of(worker: StreamAppProcess) -> list[int]:
    status, body = worker.health()
    return list(body["partitions"]) if status == 200 else []


def sharing(w1: StreamAppProcess, w2: StreamAppProcess) -> bool:
    p1, p2 = partitions_of(w1), partitions_of(w2)
    return bool(p1) and bool(p2) and sorted(p1 + p2) == list(range(PARTITIONS))


def owner(workers: list[StreamAppProcess], key: str) -> StreamAppProcess:
    partition = partition_for(key, PARTITIONS)
    return next(w for w in workers if partition in partitions_of(w))


def queue(worker: StreamAppProcess, sku: str) -> dict:
    status, body = worker.get(f"/queues/{sku}/{LOC}/{ship(30)}?limit=10000")
    assert status == 200, body
    return body


def test_any_worker_answers_and_a_killed_worker_loses_nothing(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    prefix = f"poe-{uuid.uuid4().hex[:6]}"
    base = worker_env(kafka, prefix, STREAM_APP_FORWARD_TIMEOUT_SECONDS="1")
    w1 = processes.start("worker", processes.env(base))
    w1.wait_ready(90)
    skus = [f"FWD-{i}" for i in range(8)]
    produce(kafka.bootstrap, f"{prefix}-inventory-changes",
            [stock(sku, 2) for sku in skus] + [stock("BURST", 500)])
    wait_for(lambda: all(w1.get(f"/inventory/{s}/{LOC}")[0] == 200 for s in [*skus, "BURST"]),
             30, 0.2, "stock applied")

    w2 = processes.start("worker", processes.env(base))
    wait_for(lambda: sharing(w1, w2), 90, 0.3, "two workers sharing the partitions")
    workers = [w1, w2]
    assert {partition_for(f"{s}|{LOC}", PARTITIONS) for s in skus} == set(range(PARTITIONS))

    # --- every endpoint on both workers, for keys of both ------------------------------
    rids = {}
    for i, sku in enumerate(skus):
        via = workers[i % 2]
        status, result = via.post("/pre-orders", order(f"F-{sku}", sku, "VIP"))
        assert status == 200 and result["reservations"], result
        rids[sku] = result["reservations"][0]["reservationId"]
    for sku in skus:
        views = [queue(w, sku) for w in workers]
        assert views[0] == views[1] and views[0]["entries"][0]["reservationId"] == rids[sku]
        got = [w.get(f"/reservations/{rids[sku]}") for w in workers]
        assert got[0] == got[1] and got[0][0] == 200
        atp = [w.get(f"/atp/{sku}/{LOC}?shipDate={ship(30)}&quantity=1") for w in workers]
        assert atp[0] == atp[1] and atp[0][1]["existingReservations"] == 1
        stored = [wait_for(lambda w=w, path=f"/pre-orders/F-{sku}": (lambda r: r if r[0] == 200 else None)(w.get(path)),
                           30, 0.1, "stored result") for w in workers]
        assert stored[0] == stored[1]
    # a command through the worker that does NOT own the key
    sku = skus[0]
    other = next(w for w in workers if w is not owner(workers, f"{sku}|{LOC}"))
    status, body = other.post(f"/reservations/{rids[sku]}/commit")
    assert status == 200 and body["reservation"]["committed"] is True, body
    check_credentials_and_forwarding(other, owner(workers, f"{sku}|{LOC}"), rids[sku])

    # --- a burst, the burst owner SIGKILLed mid-way, then restarted ---------------------
    victim = owner(workers, f"BURST|{LOC}")
    survivor = w1 if victim is w2 else w2
    orders = [order(f"B-{i}", "BURST", "VIP" if i % 7 == 0 else "STANDARD") for i in range(BURST)]
    produce(kafka.bootstrap, f"{prefix}-pre-orders", orders)
    consume(kafka.bootstrap, f"{prefix}-pre-order-results",
            lambda rs: sum(str(r.get("orderId", "")).startswith("B-") for r in rs) >= 150, 60)
    victim.kill()
    restarted = processes.start("worker", dict(victim.env))  # same data dir: a restart
    wait_for(lambda: sharing(survivor, restarted), 120, 0.3, "the restarted worker rejoins")

    ids = {o["orderId"] for o in orders}
    consume(kafka.bootstrap, f"{prefix}-pre-order-results",
            lambda rs: ids <= {r.get("orderId") for r in rs}, 120)
    body = wait_for(lambda: (lambda q: q if q["depth"] == BURST else None)(queue(survivor, "BURST")),
                    60, 0.3, "every burst order queued once")
    entries = body["entries"]
    assert_queue_consistent(entries)
    assert {e["orderId"] for e in entries} == ids  # none lost, none twice
    assert sorted(e["sequence"] for e in entries) == list(range(1, BURST + 1))
    assert sum(e["quantity"] for e in entries if e["status"] == "RESERVED") == 525
    assert queue(restarted, "BURST") == body  # same answer on both workers
    for proc in (survivor, restarted):
        assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
    assert "did not stop cleanly" in restarted.log_path.read_text(errors="replace")

    # --- every decision announced, each event id with one content -------------------
    events = consume(kafka.bootstrap, f"{prefix}-reservation-events",
                     lambda es: announced_every_state(es, entries), 60)
    by_id: dict[str, dict] = {}
    for event in (e for e in events if str(e.get("orderId", "")).startswith("B-")):
        known = by_id.setdefault(event["eventId"], event)
        assert known == event, f"event {event['eventId']} with two contents"
    print(f"burst: {BURST} inputs, {len(entries)} reservations, "
          f"{len(by_id)} distinct events, lost 0, duplicated 0")

    # --- a worker with an EMPTY data directory rebuilds from the changelog alone -------
    for proc in (survivor, restarted):
        proc.stop()
    rebuilt = processes.start("worker", processes.env(base))
    rebuilt.wait_ready(120)
    assert queue(rebuilt, "BURST") == body


def check_credentials_and_forwarding(
    other: StreamAppProcess, owner: StreamAppProcess, rid: str
) -> None:
    """Through the worker that does not own ``rid``: a client-set forwarding header is
    ignored (trusted, the worker would answer 404 from its own books), customer data
    only with the service key, a command needs it, and an owner that does not answer is
    503 with Retry-After within the forward timeout."""
    path = f"/reservations/{rid}"
    status, full = other.get(path)
    assert status == 200 and full["customerEmail"], full
    spoofed = other.get(path, headers={**SERVICE, "X-Stream-App-Forwarded": "1"})
    assert spoofed == (200, full)
    status, anonymous = other.get(path, headers={})
    assert status == 200 and anonymous == {
        k: v for k, v in full.items() if k not in ("customerEmail", "customerId")
    }
    status, refused = other.post(f"{path}/cancel", headers={"X-API-Key": "wrong"})
    assert status == 401 and refused["error"] == "unauthorized", refused
    assert owner.get(path) == (200, full)  # nothing was cancelled

    assert owner.proc is not None
    os.killpg(owner.proc.pid, signal.SIGSTOP)  # alive but silent
    try:
        started = time.monotonic()
        response = urllib3.request("GET", other.url + path, headers=SERVICE, timeout=10, retries=False)
        took = time.monotonic() - started
    finally:
        os.killpg(owner.proc.pid, signal.SIGCONT)
    body = orjson.loads(response.data)
    assert response.status == 503 and response.headers["Retry-After"], body
    assert body["error"] == "unavailable" and took < 3, (took, body)


def announced_every_state(events: list[dict], entries: list[dict]) -> bool:
    """Each reservation's current state was announced (RESERVED / PROMOTED for a held
    one, WAITLISTED for a waiting one)."""
    announced = {(e.get("reservationId"), e.get("eventType")) for e in events}
    for entry in entries:
        wanted = ("RESERVED", "PROMOTED") if entry["status"] == "RESERVED" else ("WAITLISTED",)
        if not any((entry["reservationId"], kind) in announced for kind in wanted):
            return False
    return True


def answered_items(body: dict) -> list[tuple[str, str]]:
    return sorted((r["reservationId"], r["status"])
                  for r in [*body.get("reservations", []), *body.get("waitlisted", [])])


def test_every_answer_given_before_a_kill_is_what_a_rebuilt_worker_holds(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    """A POST answered 200 describes a decision the changelog keeps (it is handed over once
    the writes are on the broker, before the result messages): eight clients POST
    pre-orders, the worker is SIGKILLed while they run, and a worker with an EMPTY data
    dir (the changelog alone) then holds, for every order answered before the kill, the
    reservation ids and statuses of its answer; the orders not answered, sent again, are
    each placed once."""
    prefix = f"kans-{uuid.uuid4().hex[:6]}"
    base = worker_env(kafka, prefix)
    first = processes.start("worker", processes.env(base))
    first.wait_ready(90)
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock("KILL-1", 40)])
    wait_for(lambda: first.get(f"/inventory/KILL-1/{LOC}")[0] == 200, 30, 0.2, "stock")

    answers: dict[str, tuple[int, dict]] = {}
    stop = threading.Event()

    def client(n: int) -> None:  # one storefront session: order after order until the kill
        i = 0
        while not stop.is_set():
            order_id, i = f"K{n}-{i}", i + 1
            try:
                response = urllib3.request(
                    "POST", first.url + "/pre-orders", body=orjson.dumps(order(order_id, "KILL-1")),
                    headers={**SERVICE, "Content-Type": "application/json"}, timeout=15, retries=False)
                answers[order_id] = (response.status, orjson.loads(response.data))
            except Exception:  # the worker is gone: unanswered
                answers[order_id] = (0, {})

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for thread in clients:
        thread.start()
    wait_for(lambda: sum(status == 200 for status, _ in list(answers.values())) >= 60, 60, 0.02,
             "60 answers before the kill")
    first.kill()
    stop.set()
    for thread in clients:
        thread.join(20)

    rebuilt = processes.start("worker", processes.env(base))  # a new, empty data dir
    rebuilt.wait_ready(120)
    answered = {o: body for o, (status, body) in answers.items() if status == 200}
    assert len(answered) >= 60 and all(body["success"] is not None for body in answered.values())
    for order_id, body in answered.items():
        status, now = rebuilt.get(f"/pre-orders/{order_id}")
        assert status == 200, (order_id, now)
        assert answered_items(now) == answered_items(body), (order_id, body, now)
    for order_id in (o for o, (status, _) in answers.items() if status != 200):
        status, body = rebuilt.post("/pre-orders", order(order_id, "KILL-1"))
        if status == 202:  # the replay of what the kill left undecided may still run
            body = wait_for(lambda o=order_id: (lambda got: got[1] if got[0] == 200 else None)(
                rebuilt.get(f"/pre-orders/{o}")), 60, 0.1, f"{order_id} decided")
        else:
            assert status == 200, (order_id, body)
        assert body["reservations"] or body["waitlisted"], (order_id, body)
    entries = queue(rebuilt, "KILL-1")["entries"]
    assert_queue_consistent(entries)
    assert sorted(e["orderId"] for e in entries) == sorted(answers)  # each placed once
