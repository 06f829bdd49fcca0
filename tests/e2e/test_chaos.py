"""Chaos matrix (issue 10): every flow, a worker killed with kill -9 at a random moment.

Each scenario starts real processes (the broker fixture, ``stream-app worker``, the Fluent
simulator where the flow needs it), feeds seeded random inputs, kills a worker after a
random count of observed progress, restarts it on the same data dir, waits until every
input is processed, then stops the workers and starts one with an EMPTY data dir (same app
id) that must rebuild from the changelogs alone. The expected result comes from the pure
domain functions (``stream_app.domain``) run over the same inputs: the oracle.

Every scenario prints one line (run pytest with ``-s``)::

    CHAOS <flow> seed=<s> kill_after=<k> inputs=<n> outputs=<m> lost=<x> duplicated=<y> ...

and asserts lost == 0 and duplicated == 0. A failure is repeated with the seed it prints:
``pytest -m slow -s 'tests/e2e/test_chaos.py::test_<flow>[<seed>]'``. All tests are
``slow``: they run under ``make test-all`` only.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from stream_app.domain.book import ReservationBook
from stream_app.domain.delta import sellable_quantity
from stream_app.domain.future_atp import Supply, overbooking_rate_for
from stream_app.domain.ids import reservation_id
from stream_app.domain.inventory import (
    BufferPolicy,
    State,
    aggregate,
    apply_change,
    channels_view,
    empty_state,
    expected_arrivals,
)
from stream_app.domain.preorders import Policy, PreOrder, validate_pre_order
from stream_app.domain.release import allocate_release, order_created, outcome_label
from stream_app.partitioning import partition_for
from stream_app.records import inventory_key, parse_message, parse_timestamp
from stream_app.settings import Settings
from tests.fixtures.chaos import (
    Feeder,
    Tail,
    kill_point,
    metric,
    oracle_settings,
    settle,
    skus_on_distinct_partitions,
    summary,
    without,
)
from tests.fixtures.kafka import KafkaCluster
from tests.fixtures.procs import ID_SECRET, ProcessFactory, StreamAppProcess, wait_for
from tests.fixtures.simproc import ADMIN, Sim, start_sim
from tests.fixtures.simproc import worker_env as sim_worker_env
from tests.integration.test_preorders import worker_env as preorder_worker_env

pytestmark = pytest.mark.e2e

SEEDS = [11, 23, 47]
LOC = "DC-1"
PARTITIONS = 4
CHANNELS = ("WMS", "STORE", "MARKET")
BASE_MS = 1_795_000_000_000  # updatedAt of the generated stock events (2026-11-18)


def today() -> date:
    return datetime.now(UTC).date()


def ship(days: int) -> str:
    return (today() + timedelta(days=days)).isoformat()


def key_bytes(sku: str) -> bytes:
    return inventory_key(sku, LOC).encode()


# --- inventory: inputs and oracle -----------------------------------------------------------


def stock_event(rng: random.Random, event_id: str, sku: str, channel: str, at_ms: int) -> dict[str, Any]:
    """One channel record; updatedAt as epoch ms or as ISO 8601, either is the contract."""
    updated: Any = at_ms
    if rng.random() < 0.5:
        updated = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    if rng.random() < 0.05:
        return {"eventId": event_id, "type": "DELETE", "channel": channel, "sku": sku,
                "location": LOC, "updatedAt": updated}
    on_hand = rng.randint(0, 200)
    event: dict[str, Any] = {
        "eventId": event_id, "channel": channel, "sku": sku, "location": LOC,
        "onHand": on_hand, "reserved": rng.randint(0, min(on_hand, 30)), "updatedAt": updated,
    }
    if rng.random() < 0.2:
        event["buffer"] = rng.randint(0, 5)
    return event


def inventory_inputs(rng: random.Random, prefix: str, keys: int, per_key: int) -> tuple[list[Any], int]:
    """Messages (single records, some batch envelopes, some sent twice) in a shuffled order:
    a channel's records arrive out of order, so many are stale when they arrive."""
    records = []
    for k in range(keys):
        sku = f"{prefix}-{k}"
        for i in range(per_key):
            at_ms = BASE_MS + rng.randint(0, 3_600) * 1000  # collisions: ties on eventId
            records.append(stock_event(rng, f"{sku}-e{i}", sku, rng.choice(CHANNELS), at_ms))
    rng.shuffle(records)
    messages: list[Any] = []
    i = 0
    while i < len(records):
        if rng.random() < 0.1:
            size = rng.randint(2, 4)
            messages.append({"records": records[i : i + size]})
            i += size
        else:
            messages.append(records[i])
            i += 1
        if rng.random() < 0.03:
            messages.append(messages[-1])  # upstream at-least-once: the same message twice
    return messages, len(records)


def inventory_oracle(messages: list[Any], settings: Settings) -> dict[str, State]:
    """Every message parsed and applied with the pure functions, in the order sent."""
    states: dict[str, State] = {}
    for message in messages:
        good, bad = parse_message(orjson.dumps(message), settings.max_event_bytes)
        assert not bad, bad
        for record in good:
            apply_change(states.setdefault(record.key, empty_state()), record)
    return states


def buffers_of(settings: Settings) -> BufferPolicy:
    return BufferPolicy(settings.default_buffer, dict(settings.channel_buffers))


def inventory_view(state: State, settings: Settings) -> dict[str, Any]:
    """The fields of GET /inventory the oracle predicts."""
    buffers = buffers_of(settings)
    agg = aggregate(state, buffers, settings.oversell_protection)
    return {
        "channels": channels_view(state, buffers), "totalOnHand": agg.total_on_hand,
        "totalReserved": agg.total_reserved, "buffer": agg.buffer, "atp": agg.atp,
        "expectedArrivals": expected_arrivals(state),
    }


def compare_inventory(worker: StreamAppProcess, expected: dict[str, dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(lost, wrong, examples): lost = a key missing, or a channel of it older than the
    oracle's (an update not applied); wrong = any other difference."""
    lost = wrong = 0
    examples: list[str] = []
    for key, want in expected.items():
        sku, _, location = key.partition("|")
        status, body = worker.get(f"/inventory/{sku}/{location}")
        if status != 200:
            lost += 1
            examples.append(f"{key}: HTTP {status}")
            continue
        got = {field: body.get(field) for field in want}
        if got == want:
            continue
        behind = any(
            name not in got["channels"]
            or parse_timestamp(got["channels"][name]["updatedAt"])[1]
            < parse_timestamp(rec["updatedAt"])[1]
            for name, rec in want["channels"].items()
        )
        if behind:
            lost += 1
        else:
            wrong += 1
        if len(examples) < 3:
            examples.append(f"{key}: got {got} want {want}")
    return lost, wrong, examples


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_inventory_ingest(kafka: KafkaCluster, processes: ProcessFactory, seed: int) -> None:
    """Flow 1: multi-channel stock events for many keys, stale and duplicated ones among
    them; kill -9 after a random count of applied records, while inputs still arrive."""
    started = time.monotonic()
    rng = random.Random(f"inventory:{seed}")
    prefix = f"chinv-{uuid.uuid4().hex[:6]}"
    base = preorder_worker_env(kafka, prefix)
    settings = oracle_settings(base)
    messages, n_records = inventory_inputs(rng, "INV", keys=150, per_key=16)
    expected = {k: inventory_view(s, settings) for k, s in inventory_oracle(messages, settings).items()}
    kill_after = kill_point(rng, n_records)

    worker = processes.start("worker", processes.env(base))
    worker.wait_ready(120)
    feeder = Feeder(kafka.bootstrap, f"{prefix}-inventory-changes", [(None, m) for m in messages], chunk=4).start()
    applied = "stream_app_inventory_records_applied_total"
    wait_for(lambda: metric(worker, applied) >= kill_after, 120, 0.02, f"{kill_after} records applied")
    at_kill = int(metric(worker, applied))
    worker.kill()
    sent_at_kill = feeder.sent
    feeder.join()

    restarted = processes.start("worker", dict(worker.env))
    restarted.wait_ready(120)
    settle(lambda: compare_inventory(restarted, expected)[:2] == (0, 0), 150, 1.0)
    lost, wrong, examples = compare_inventory(restarted, expected)
    unclean = "did not stop cleanly" in restarted.log_path.read_text(errors="replace")
    for proc in (restarted,):
        proc.stop()

    rebuilt = processes.start("worker", processes.env(base))  # EMPTY data dir, same app id
    rebuilt.wait_ready(180)
    settle(lambda: compare_inventory(rebuilt, expected)[:2] == (0, 0), 60, 1.0)
    r_lost, r_wrong, r_examples = compare_inventory(rebuilt, expected)
    print(summary(
        "inventory", seed, kill_after, n_records, len(expected) - lost - wrong, lost + r_lost,
        wrong + r_wrong, messages=len(messages), keys=len(expected), applied_at_kill=at_kill,
        sent_at_kill=sent_at_kill, rebuilt_lost=r_lost, rebuilt_wrong=r_wrong,
        seconds=round(time.monotonic() - started),
    ))
    assert unclean, "the restarted worker did not report the unclean stop"
    assert (lost, wrong) == (0, 0), f"restarted worker differs from the oracle: {examples}"
    assert (r_lost, r_wrong) == (0, 0), f"rebuilt worker differs from the oracle: {r_examples}"


# --- delta flush ------------------------------------------------------------------------------


def sync_inputs(rng: random.Random, keys: int) -> list[dict[str, Any]]:
    """One to three WMS records per key with rising updatedAt, keys interleaved."""
    events: list[dict[str, Any]] = []
    pending = {f"DLT-{k}": rng.randint(1, 3) for k in range(keys)}
    versions: Counter[str] = Counter()
    while pending:
        sku = rng.choice(sorted(pending))
        versions[sku] += 1
        on_hand = rng.randint(0, 150)
        events.append({
            "eventId": f"{sku}-v{versions[sku]}", "channel": "WMS", "sku": sku, "location": LOC,
            "onHand": on_hand, "reserved": rng.randint(0, min(on_hand, 20)),
            "updatedAt": BASE_MS + versions[sku] * 60_000,
        })
        pending[sku] -= 1
        if not pending[sku]:
            del pending[sku]
    return events


def delta_jobs(sim: Sim) -> list[dict[str, Any]]:
    return [j for j in sim.get("/_sim/jobs") if not j["preprocessing"]]


def sent_records(sim: Sim) -> int:
    return sum(int(b["entityCount"]) for b in sim.batches())


def accepted_everywhere(worker: StreamAppProcess, sellable: dict[str, int]) -> list[str]:
    """Keys whose worker view does not say: sellable as the oracle, accepted, not dirty."""
    bad = []
    for key, qty in sellable.items():
        sku, _, location = key.partition("|")
        status, body = worker.get(f"/inventory/{sku}/{location}")
        if status != 200 or (body.get("sellable"), body.get("lastAccepted"), body.get("dirty")) != (qty, qty, False):
            bad.append(f"{key}: {status} {body if status != 200 else {k: body.get(k) for k in ('sellable', 'lastAccepted', 'dirty')}} want {qty}")
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_delta_flush(kafka: KafkaCluster, processes: ProcessFactory, seed: int) -> None:
    """Flow 2: stock for a few hundred keys, Fluent slowed down (batches take 0.4 s each);
    kill -9 once a random number of records reached the simulator, mid flush."""
    started = time.monotonic()
    rng = random.Random(f"delta:{seed}")
    sim = start_sim(processes)
    app_id = f"chsync-{uuid.uuid4().hex[:6]}"
    base = sim_worker_env(kafka, app_id, sim, STREAM_APP_BATCH_SIZE="50")
    settings = oracle_settings(base)
    events = sync_inputs(rng, keys=400)
    states = inventory_oracle(events, settings)
    sellable = {
        key: sellable_quantity(aggregate(s, buffers_of(settings), settings.oversell_protection).atp,
                               0, settings.sellable_policy)
        for key, s in states.items()
    }
    kill_after = rng.randint(60, 260)

    worker = processes.start("worker", processes.env(base))
    worker.wait_ready(120)
    sim.post("/_sim/faults", {"latency": 0.4, "count": 100000, "path": "/api/v4.1/job/"})
    feeder = Feeder(kafka.bootstrap, f"{app_id}-inventory-changes", [(None, e) for e in events], chunk=50).start()
    wait_for(lambda: sent_records(sim) >= kill_after, 120, 0.02, f"{kill_after} records sent to Fluent")
    worker.kill()
    at_kill = sent_records(sim)
    feeder.join()
    sim.clear_faults()

    restarted = processes.start("worker", dict(worker.env))
    restarted.wait_ready(120)

    def fluent_lost() -> list[str]:
        held = sim.inventory()
        return [k for k, q in sellable.items() if held.get(k) != q]

    settle(lambda: not fluent_lost(), 150, 0.5)
    settle(lambda: not accepted_everywhere(restarted, sellable), 60, 1.0)
    lost = fluent_lost()
    not_acked = accepted_everywhere(restarted, sellable)
    jobs_after_restart = len(delta_jobs(sim))
    restarted.stop()

    rebuilt = processes.start("worker", processes.env(base))  # EMPTY data dir, same app id
    before_rebuild = sent_records(sim)
    rebuilt.wait_ready(180)
    settle(lambda: not accepted_everywhere(rebuilt, sellable), 60, 1.0)
    rebuilt_bad = accepted_everywhere(rebuilt, sellable)
    resent_after_rebuild = sent_records(sim) - before_rebuild
    outputs = sent_records(sim)
    duplicated = max(0, len(delta_jobs(sim)) - 1)
    print(summary(
        "delta", seed, kill_after, len(events), outputs, len(lost), duplicated,
        keys=len(sellable), sent_at_kill=at_kill, resent=outputs - len(sellable),
        not_acked=len(not_acked), rebuilt_bad=len(rebuilt_bad),
        resent_after_rebuild=resent_after_rebuild, jobs=jobs_after_restart,
        seconds=round(time.monotonic() - started),
    ))
    assert not lost, f"Fluent lost updates: {lost[:5]}"
    assert duplicated == 0, f"{len(delta_jobs(sim))} delta jobs for one day"
    assert not not_acked, f"restarted worker: {not_acked[:3]}"
    assert not rebuilt_bad, f"rebuilt worker: {rebuilt_bad[:3]}"
    assert all(int(b["entityCount"]) <= 50 for b in sim.batches())


# --- pre-orders: inputs, oracle, comparisons ---------------------------------------------------


def stock_record(sku: str, on_hand: int) -> dict[str, Any]:
    return {"eventId": f"stock-{sku}", "channel": "WMS", "sku": sku, "location": LOC,
            "onHand": on_hand, "reserved": 0, "updatedAt": "2026-01-01T00:00:00Z"}


def preorder(order_id: str, sku: str, tier: str, quantity: int, days: int) -> dict[str, Any]:
    return {
        "orderId": order_id, "customerId": f"c-{order_id}", "customerEmail": f"{order_id}@example.com",
        "customerTier": tier, "shipDate": ship(days), "source": "web",
        "items": [{"sku": sku, "productName": "Console", "quantity": quantity, "locationRef": LOC}],
    }


def random_orders(rng: random.Random, tag: str, skus: list[str], per_sku: int, days: int,
                  quantities: tuple[int, ...] = (1, 1, 1, 2)) -> list[tuple[str, dict[str, Any]]]:
    """``(sku, order)`` with SKUs interleaved at random; each SKU's own order is fixed."""
    left = {sku: per_sku for sku in skus}
    out: list[tuple[str, dict[str, Any]]] = []
    while left:
        sku = rng.choice(sorted(left))
        n = per_sku - left[sku]
        tier = rng.choices(["STANDARD", "VIP", "PLATINUM"], weights=[80, 15, 5])[0]
        out.append((sku, preorder(f"{tag}-{sku}-{n}", sku, tier, rng.choice(quantities), days)))
        left[sku] -= 1
        if not left[sku]:
            del left[sku]
    return out


class Oracle:
    """The reservation books the domain functions build from the same inputs, in the order
    each SKU's inputs reach its partition, and every event they announce (by id)."""

    def __init__(self, settings: Settings, stock: dict[str, int]) -> None:
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.books = {sku: ReservationBook(sku, LOC) for sku in stock}
        self.supplies: dict[str, Supply] = {}
        for sku, on_hand in stock.items():
            state = inventory_oracle([stock_record(sku, on_hand)], settings)[inventory_key(sku, LOC)]
            atp = aggregate(state, buffers_of(settings), settings.oversell_protection).atp
            rate = overbooking_rate_for(sku, None, settings.overbooking_rates, settings.overbooking_rate)
            self.supplies[sku] = Supply.from_expected(atp, expected_arrivals(state), rate,
                                                      settings.expected_supply_factor)
        self.events: dict[str, dict[str, Any]] = {}
        self.now = datetime.now(UTC)

    def note(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            known = self.events.setdefault(event["eventId"], without(event))
            assert known == without(event), "the oracle itself gave an id two contents"

    def place(self, raw: dict[str, Any]) -> None:
        parsed = validate_pre_order(raw, self.policy, today())
        assert isinstance(parsed, PreOrder), parsed
        for request in parsed.item_requests():
            book = self.books[request.sku]
            self.note(book.place(request, self.supplies[request.sku], self.policy, self.now).events)

    def command(self, sku: str, command: dict[str, Any]) -> None:
        """What the book-command handler does with one command (agents/preorders.py)."""
        book, supply, now = self.books[sku], self.supplies[sku], self.now
        rid = command.get("reservationId")
        if rid is not None:
            if rid not in book:
                return
            if command["command"] == "cancel":
                self.note(book.cancel(rid, supply, self.policy, now).events)
            else:
                self.note(book.commit(rid, self.policy, now).events)
            return
        order_id = command["orderId"]
        if not book.order_reservations(order_id):
            return
        if command["command"] == "cancel":
            self.note(book.cancel_order(order_id, supply, self.policy, now).events)
        else:
            for reservation in book.order_reservations(order_id):
                self.note(book.commit(reservation.reservation_id, self.policy, now).events)

    def reservations(self) -> dict[str, dict[str, Any]]:
        out = {}
        for book in self.books.values():
            for r in book.reservations():
                out[r.reservation_id] = {
                    "status": str(r.status), "committed": r.committed, "reason": r.reason,
                    "sequence": r.sequence, "quantity": r.quantity, "orderId": r.order_id,
                    "queuePosition": book.queue_position(r),
                }
        return out


def compare_events(topic_events: list[dict[str, Any]], oracle: Oracle) -> dict[str, Any]:
    """Events on reservation-events against the oracle's: by id, content without ``at``
    (the oracle's clock is not the worker's); among themselves, whole (a replay sends the
    same bytes, ``at`` included)."""
    seen: dict[str, dict[str, Any]] = {}
    whole: dict[str, dict[str, Any]] = {}
    two_contents = 0
    for event in topic_events:
        seen.setdefault(event["eventId"], without(event))
        if whole.setdefault(event["eventId"], event) != event:
            two_contents += 1
    missing = set(oracle.events) - set(seen)
    extra = set(seen) - set(oracle.events)
    differing = sum(1 for i in set(seen) & set(oracle.events) if seen[i] != oracle.events[i])
    return {"events": len(seen), "missing_events": len(missing), "extra_events": len(extra),
            "two_contents": two_contents, "differing_events": differing,
            "extra_examples": [seen[i] for i in sorted(extra)][:5],
            "missing_examples": [oracle.events[i] for i in sorted(missing)][:5]}


def reservation_states(worker: StreamAppProcess, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for rid in ids:
        status, body = worker.get(f"/reservations/{rid}")
        out[rid] = body if status == 200 else None
    return out


def state_mismatches(worker: StreamAppProcess, want: dict[str, dict[str, Any]],
                     fields: tuple[str, ...] = ("status", "committed", "reason")) -> tuple[int, list[str]]:
    """(missing, differing descriptions) of every reservation against the oracle."""
    got = reservation_states(worker, sorted(want))
    missing = sum(1 for v in got.values() if v is None)
    differing = [
        f"{rid}: got {({f: body.get(f) for f in fields})} want {({f: want[rid][f] for f in fields})}"
        for rid, body in got.items()
        if body is not None and any(body.get(f) != want[rid][f] for f in fields)
    ]
    return missing, differing


def queue(worker: StreamAppProcess, sku: str, days: int) -> dict[str, Any]:
    status, body = worker.get(f"/queues/{sku}/{LOC}/{ship(days)}?limit=10000")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def partitions_of(worker: StreamAppProcess) -> list[int]:
    try:
        status, body = worker.health()
    except Exception:
        return []
    return list(body["partitions"]) if status == 200 else []


def sharing(a: StreamAppProcess, b: StreamAppProcess) -> bool:
    pa, pb = partitions_of(a), partitions_of(b)
    return bool(pa) and bool(pb) and sorted(pa + pb) == list(range(PARTITIONS))


def set_stock(kafka: KafkaCluster, prefix: str, worker: StreamAppProcess, stock: dict[str, int]) -> None:
    feeder = Feeder(kafka.bootstrap, f"{prefix}-inventory-changes",
                    [(key_bytes(s), stock_record(s, q)) for s, q in stock.items()]).start()
    feeder.join()
    wait_for(lambda: all(worker.get(f"/inventory/{s}/{LOC}")[1].get("totalOnHand") == q
                         for s, q in stock.items()), 60, 0.2, "stock applied")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_preorder_burst(kafka: KafkaCluster, processes: ProcessFactory, seed: int) -> None:
    """Flow 3: two workers, a burst of pre-orders over four SKUs on four partitions (mixed
    tiers and quantities, so bumps happen); the owner of the first SKU is killed -9 after
    a random number of its orders' results."""
    started = time.monotonic()
    rng = random.Random(f"burst:{seed}")
    prefix = f"chpo-{uuid.uuid4().hex[:6]}"
    base = preorder_worker_env(kafka, prefix)
    skus = skus_on_distinct_partitions("BURST", LOC, PARTITIONS, 4)
    stock = {sku: rng.randint(60, 200) for sku in skus}
    days, per_sku = 30, 400
    orders = random_orders(rng, f"B{seed}", skus, per_sku, days)
    oracle = Oracle(oracle_settings(base), stock)
    for _sku, raw in orders:
        oracle.place(raw)
    want = oracle.reservations()
    sku_of = {raw["orderId"]: sku for sku, raw in orders}

    w1 = processes.start("worker", processes.env(base))
    w1.wait_ready(120)
    set_stock(kafka, prefix, w1, stock)
    w2 = processes.start("worker", processes.env(base))
    wait_for(lambda: sharing(w1, w2), 120, 0.3, "two workers sharing the partitions")
    owner_partition = partition_for(inventory_key(skus[0], LOC), PARTITIONS)
    victim = w1 if owner_partition in partitions_of(w1) else w2
    survivor = w2 if victim is w1 else w1
    victim_skus = {s for s in skus if partition_for(inventory_key(s, LOC), PARTITIONS) in partitions_of(victim)}
    victim_orders = sum(1 for s, _ in orders if s in victim_skus)
    kill_after = kill_point(rng, victim_orders)

    results = Tail(kafka.bootstrap, f"{prefix}-pre-order-results").start()
    events = Tail(kafka.bootstrap, f"{prefix}-reservation-events").start()
    try:
        feeder = Feeder(kafka.bootstrap, f"{prefix}-pre-orders",
                        [(key_bytes(s), raw) for s, raw in orders]).start()
        wait_for(lambda: results.count(lambda r: sku_of.get(r.get("orderId")) in victim_skus) >= kill_after,
                 120, 0.02, f"{kill_after} results of the victim's orders")
        victim.kill()
        feeder.join()
        restarted = processes.start("worker", dict(victim.env))  # same data dir: a restart
        wait_for(lambda: sharing(survivor, restarted), 150, 0.3, "the restarted worker rejoins")

        ids = set(sku_of)
        settle(lambda: ids <= {r.get("orderId") for r in results.records()}, 150, 0.5)
        no_result = len(ids - {r.get("orderId") for r in results.records()})
        settle(lambda: compare_events(events.records(), oracle)["missing_events"] == 0, 60, 0.5)
        figures = compare_events(events.records(), oracle)
        queues = {sku: queue(survivor, sku, days) for sku in skus}
        entries = [e for q in queues.values() for e in q["entries"]]
        counts = Counter(e["orderId"] for e in entries)
        twice = sum(c - 1 for c in counts.values() if c > 1)
        queued_want = {rid: w for rid, w in want.items() if w["status"] in ("RESERVED", "WAITLISTED")}
        missing = len(set(queued_want) - {e["reservationId"] for e in entries})
        fields = ("status", "sequence", "quantity", "queuePosition", "orderId")
        differing = [e["reservationId"] for e in entries
                     if e["reservationId"] in want and any(e.get(f) != want[e["reservationId"]][f] for f in fields)]
        sequences_ok = all(sorted(e["sequence"] for e in q["entries"]) == list(range(1, per_sku + 1))
                           for q in queues.values())
        reserved_units = sum(e["quantity"] for e in entries if e["status"] == "RESERVED")
        want_units = sum(w["quantity"] for w in want.values() if w["status"] == "RESERVED")
        same_on_both = all(queue(restarted, sku, days) == queues[sku] for sku in skus)
        unclean = "did not stop cleanly" in restarted.log_path.read_text(errors="replace")
        for proc in (survivor, restarted):
            proc.stop()

        rebuilt = processes.start("worker", processes.env(base))  # EMPTY data dir, same app id
        rebuilt.wait_ready(180)
        rebuilt_same = all(queue(rebuilt, sku, days) == queues[sku] for sku in skus)
    finally:
        results.close()
        events.close()
    lost = missing + no_result + figures["missing_events"]
    duplicated = twice + figures["two_contents"] + figures["extra_events"]
    print(summary(
        "preorders", seed, kill_after, len(orders), figures["events"], lost, duplicated,
        victim_orders=victim_orders, queued=len(entries), reserved_units=reserved_units,
        oracle_units=want_units, differing=len(differing),
        differing_events=figures["differing_events"], rebuilt_same=rebuilt_same,
        seconds=round(time.monotonic() - started),
    ))
    assert unclean, "the restarted worker did not report the unclean stop"
    assert lost == 0 and duplicated == 0, figures
    assert not differing and figures["differing_events"] == 0, differing[:5]
    assert sequences_ok and reserved_units == want_units
    assert same_on_both and rebuilt_same


# --- cancel / commit commands -----------------------------------------------------------------


def random_commands(rng: random.Random, orders: list[tuple[str, dict[str, Any]]], count: int
                    ) -> list[tuple[str, dict[str, Any]]]:
    """``(sku, command)``: cancels and commits by reservation id and by order id, some sent
    twice, a few for reservations that do not exist."""
    out: list[tuple[str, dict[str, Any]]] = []
    while len(out) < count:
        if out and rng.random() < 0.05:
            out.append(out[-1])  # the same command twice
            continue
        sku, raw = rng.choice(orders)
        order_id = raw["orderId"] if rng.random() > 0.02 else f"nope-{len(out)}"
        name = rng.choices(["cancel", "commit"], weights=[45, 55])[0]
        if rng.random() < 0.7:
            command = {"command": name, "reservationId": reservation_id(order_id, sku, LOC, 0, ID_SECRET.encode())}
        else:
            command = {"command": name, "orderId": order_id}
        out.append((sku, command))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_commands(kafka: KafkaCluster, processes: ProcessFactory, seed: int) -> None:
    """Flow 4: pre-orders placed, then a random mix of cancels and commits on
    reservation-commands (each SKU's commands in one partition, in order); kill -9 after a
    random number of the events they cause."""
    started = time.monotonic()
    rng = random.Random(f"commands:{seed}")
    prefix = f"chcmd-{uuid.uuid4().hex[:6]}"
    base = preorder_worker_env(kafka, prefix)
    skus = skus_on_distinct_partitions("CMD", LOC, PARTITIONS, 4)
    stock = {sku: rng.randint(30, 60) for sku in skus}
    days = 30
    orders = random_orders(rng, f"C{seed}", skus, 100, days)
    commands = random_commands(rng, orders, 600)
    oracle = Oracle(oracle_settings(base), stock)
    for _sku, raw in orders:
        oracle.place(raw)
    placed_events = len(oracle.events)
    for sku, command in commands:
        oracle.command(sku, command)
    command_events = len(oracle.events) - placed_events
    want = oracle.reservations()
    kill_after = kill_point(rng, command_events)
    caused = ("CANCELLED", "COMMITTED", "PROMOTED")

    worker = processes.start("worker", processes.env(base))
    worker.wait_ready(120)
    set_stock(kafka, prefix, worker, stock)
    results = Tail(kafka.bootstrap, f"{prefix}-pre-order-results").start()
    events = Tail(kafka.bootstrap, f"{prefix}-reservation-events").start()
    try:
        Feeder(kafka.bootstrap, f"{prefix}-pre-orders", [(key_bytes(s), r) for s, r in orders]).start().join()
        ids = {raw["orderId"] for _, raw in orders}
        wait_for(lambda: ids <= {r.get("orderId") for r in results.records()}, 120, 0.3,
                 "every pre-order decided before the commands")
        feeder = Feeder(kafka.bootstrap, f"{prefix}-reservation-commands",
                        [(key_bytes(s), c) for s, c in commands], chunk=10).start()
        wait_for(lambda: events.count(lambda e: e.get("eventType") in caused) >= kill_after,
                 120, 0.02, f"{kill_after} events caused by commands")
        worker.kill()
        feeder.join()

        restarted = processes.start("worker", dict(worker.env))
        restarted.wait_ready(120)
        settle(lambda: compare_events(events.records(), oracle)["missing_events"] == 0, 120, 0.5)
        settle(lambda: state_mismatches(restarted, want) == (0, []), 60, 1.0)
        missing, differing = state_mismatches(restarted, want)
        figures = compare_events(events.records(), oracle)
        unclean = "did not stop cleanly" in restarted.log_path.read_text(errors="replace")
        restarted.stop()

        rebuilt = processes.start("worker", processes.env(base))  # EMPTY data dir, same app id
        rebuilt.wait_ready(180)
        r_missing, r_differing = state_mismatches(rebuilt, want)
    finally:
        results.close()
        events.close()
    statuses = Counter(w["status"] + ("+committed" if w["committed"] else "") for w in want.values())
    lost = missing + figures["missing_events"] + r_missing
    duplicated = figures["two_contents"] + figures["extra_events"]
    print(summary(
        "commands", seed, kill_after, len(orders) + len(commands), figures["events"], lost,
        duplicated, commands=len(commands), oracle_command_events=command_events,
        differing=len(differing), rebuilt_differing=len(r_differing),
        differing_events=figures["differing_events"],
        statuses="/".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
        seconds=round(time.monotonic() - started),
    ))
    assert unclean, "the restarted worker did not report the unclean stop"
    assert lost == 0 and duplicated == 0, (figures, differing[:5])
    assert not differing, differing[:5]
    assert not r_differing, r_differing[:5]
    assert figures["differing_events"] == 0, figures


# --- release ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_release(kafka: KafkaCluster, processes: ProcessFactory, seed: int) -> None:
    """Flow 5: reservations over three SKUs (some over-subscribed, so the release also
    cancels), Fluent slowed down (0.25 s per createOrder request); kill -9 after a random
    number of Fluent orders created."""
    started = time.monotonic()
    rng = random.Random(f"release:{seed}")
    sim = start_sim(processes)
    app_id = f"chrel-{uuid.uuid4().hex[:6]}"
    base = sim_worker_env(
        kafka, app_id, sim,
        STREAM_APP_MIN_DAYS_AHEAD="0", STREAM_APP_EXPIRY_DAYS="0",
        STREAM_APP_FLUSH_INTERVAL_SECONDS="30",
        STREAM_APP_RELEASE_ORDER_CONCURRENCY="2", STREAM_APP_RELEASE_ORDERS_PER_REQUEST="2",
    )
    days = 4
    skus = skus_on_distinct_partitions("REL", LOC, PARTITIONS, 3)
    stock = {sku: rng.choice([15, 20, 40]) for sku in skus}
    orders = random_orders(rng, f"R{seed}", skus, 24, days, quantities=(1,))
    oracle = Oracle(oracle_settings(base), stock)
    for _sku, raw in orders:
        oracle.place(raw)
    placed = oracle.reservations()
    release_date = date.fromisoformat(ship(days))
    for sku, book in oracle.books.items():
        outcome = allocate_release(book, release_date, oracle.supplies[sku].current_atp,
                                   oracle.policy, oracle.now, "release:oracle")
        for reservation in outcome.to_order:
            order_created(book, reservation.reservation_id, oracle.now)
    want = oracle.reservations()
    totals = Counter(outcome_label(r) for b in oracle.books.values() for r in b.reservations())
    refs = {"PO-" + rid for rid, w in want.items() if w["status"] == "CONFIRMED"}
    kill_after = rng.randint(3, max(4, len(refs) * 6 // 10))

    worker = processes.start("worker", processes.env(base))
    worker.wait_ready(120)
    set_stock(kafka, app_id, worker, stock)
    events = Tail(kafka.bootstrap, f"{app_id}-reservation-events").start()
    try:
        Feeder(kafka.bootstrap, f"{app_id}-pre-orders", [(key_bytes(s), r) for s, r in orders]).start().join()
        settle(lambda: state_mismatches(worker, placed, ("status",)) == (0, []), 90, 0.5)
        before = state_mismatches(worker, placed, ("status",))
        assert before == (0, []), f"placement differs from the oracle: {before}"

        def orders_in_fluent() -> list[str]:
            return [o["ref"] for o in sim.get("/_sim/orders")]

        sim.post("/_sim/faults", {"latency": 0.25, "count": 100000, "path": "/graphql"})
        code, body = worker.post(f"/admin/release?date={release_date}", headers=ADMIN)
        assert code == 202, body
        run_id = body["runId"]
        wait_for(lambda: len(refs & set(orders_in_fluent())) >= kill_after, 90, 0.02,
                 f"{kill_after} Fluent orders")
        worker.kill()
        at_kill = len(refs & set(orders_in_fluent()))
        sim.clear_faults()

        restarted = processes.start("worker", dict(worker.env))
        restarted.wait_ready(120)

        def report(proc: StreamAppProcess) -> dict[str, Any]:
            code, body = proc.get(f"/releases/{run_id}")
            return body if code == 200 else {}

        settle(lambda: state_mismatches(restarted, want, ("status", "reason")) == (0, []), 120, 0.5)
        settle(lambda: report(restarted).get("state") in ("completed", "completed_with_failures"), 60, 0.5)
        missing, differing = state_mismatches(restarted, want, ("status", "reason"))
        run = report(restarted)
        listed = orders_in_fluent()
        settle(lambda: {e["reservationId"] for e in events.records() if e.get("eventType") == "CONFIRMED"}
               >= {r[3:] for r in refs}, 30, 0.5)
        confirmed_ids: dict[str, set[str]] = {}
        contents: dict[str, dict[str, Any]] = {}
        two_contents = 0
        for event in events.records():
            if contents.setdefault(event["eventId"], event) != event:  # `at` included
                two_contents += 1
            if event.get("eventType") == "CONFIRMED":
                confirmed_ids.setdefault(event["reservationId"], set()).add(event["eventId"])
        restarted.stop()

        rebuilt = processes.start("worker", processes.env(base))  # EMPTY data dir, same app id
        rebuilt.wait_ready(180)
        r_missing, r_differing = state_mismatches(rebuilt, want, ("status", "reason"))
        rebuilt_run = report(rebuilt)
    finally:
        events.close()
        sim.clear_faults()
    ref_counts = Counter(listed)
    doubled_orders = sum(c - 1 for r, c in ref_counts.items() if c > 1)
    missing_orders = len(refs - set(listed))
    unexpected_orders = len({r for r in listed if r.startswith("PO-")} - refs)
    unannounced = len({r[3:] for r in refs} - set(confirmed_ids))
    announced_twice = sum(1 for ids in confirmed_ids.values() if len(ids) > 1)
    lost = missing + missing_orders + unannounced + r_missing
    duplicated = doubled_orders + unexpected_orders + announced_twice + two_contents
    print(summary(
        "release", seed, kill_after, len(orders), len(listed), lost, duplicated,
        confirmed=len(refs), orders_at_kill=at_kill, differing=len(differing),
        rebuilt_differing=len(r_differing), run_state=run.get("state"),
        rebuilt_run_state=rebuilt_run.get("state"),
        totals="/".join(f"{k}:{v}" for k, v in sorted(totals.items())),
        seconds=round(time.monotonic() - started),
    ))
    assert lost == 0 and duplicated == 0, (
        f"missing={missing} missing_orders={missing_orders} unannounced={unannounced} "
        f"doubled_orders={doubled_orders} unexpected={unexpected_orders} "
        f"announced_twice={announced_twice} two_contents={two_contents}"
    )
    assert not differing and not r_differing, (differing[:5], r_differing[:5])
    assert run.get("state") == "completed", run
    assert run.get("totals") == dict(sorted(totals.items())), (run.get("totals"), totals)
    assert rebuilt_run.get("state") == "completed", rebuilt_run
