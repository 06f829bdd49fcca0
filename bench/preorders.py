"""Pre-order benchmark (issue 4): decision latency and the launch burst, on one worker.

Starts its own embedded broker and ONE real ``stream-app worker`` process, then measures:

(a) ``POST /pre-orders`` → 200: p50/p99 at a steady 200/s and 500/s (open loop);
(b) topic to result (``pre-orders`` → ``pre-order-results``): p50/p99 at 200/s and 500/s,
    with pre-orders keyed by ``sku|location`` (the documented way: decided where they
    arrive) and, as the baseline in the same run, keyed by orderId (7 in 8 then take the
    repartition hop to the partition of their SKU);
(c) the launch burst: N single-item pre-orders for ONE SKU against U units (default
    50,000 vs 5,000; 2% PLATINUM, 10% VIP, the rest STANDARD, shuffled), produced as fast
    as possible: time from the first send to the last decision, oversell (reserved units
    above floor(rate × U)) and tier order (the RESERVED set is exactly the head of the
    priority order; no rejected item outranks a reserved one) verified on the final state.

(d) the floor: (b) keyed by ``sku|location`` against ``bench.floor_worker``, the same worker
    set-up with an agent that answers without deciding (what Faust, the broker and the load
    generator cost here before any product work), with the ratio worker / floor.

Usage: python bench/preorders.py [--quick] [--seconds S] [--burst N] [--units U] [--no-floor | --floor-only] [--topic-only] [--rates R1,R2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from bench.common import preload, python_path  # noqa: E402
from stream_app.broker.consumers import assign_from_end  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port, stop_process  # noqa: E402

PARTITIONS = 8
LOC = "DC-1"
SCORES = {"PLATINUM": 150, "VIP": 100, "STANDARD": 50}
SHIP = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
SERVICE_KEY = "bench-service-key"


def pre_order(order_id: str, sku: str, tier: str = "STANDARD") -> dict[str, Any]:
    return {
        "orderId": order_id, "customerId": f"c-{order_id}", "customerEmail": f"{order_id}@example.com",
        "customerTier": tier, "shipDate": SHIP, "source": "bench",
        "items": [{"sku": sku, "productName": "Console", "quantity": 1, "locationRef": LOC}],
    }


def stock(sku: str, units: int) -> dict[str, Any]:
    return {
        "eventId": uuid.uuid4().hex, "channel": "WMS", "sku": sku, "location": LOC,
        "onHand": units, "reserved": 0, "updatedAt": datetime.now(UTC).isoformat(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Worker:
    def __init__(self, bootstrap: str, prefix: str, module: str = "stream_app.cli") -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-preorders-"))
        self.port = free_port()
        self.prefix = prefix
        self.env = {
            **os.environ,
            "PYTHONPATH": python_path(),
            "STREAM_APP_KAFKA_BROKER": bootstrap,
            "STREAM_APP_APP_ID": prefix,
            "STREAM_APP_PARTITIONS": str(PARTITIONS),
            "STREAM_APP_CORRECT_END_OFFSETS": "true",
            "STREAM_APP_WEB_PORT": str(self.port),
            "STREAM_APP_DATA_DIR": str(self.data_dir),
            "STREAM_APP_FLUENT_SIM_PORT": str(free_port()),
            # INFO, not WARNING: at WARNING and above the Faust worker's terminal spinner
            # sets the root logger to DEBUG, and every aiokafka debug line then costs CPU
            "STREAM_APP_LOG_LEVEL": "INFO",
            "STREAM_APP_PRE_ORDER_WAIT_SECONDS": "5",
            "STREAM_APP_MAX_QUEUE_DEPTH": "100000",
            "STREAM_APP_SERVICE_API_KEY": SERVICE_KEY,
            **{f"STREAM_APP_TOPIC_{name.upper().replace('-', '_')}": f"{prefix}-{name}"
               for name in ("inventory-changes", "pre-orders", "reservation-commands",
                            "reservation-events", "pre-order-results")},
        }
        self.log = open(self.data_dir / "worker.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *(["worker"] if module == "stream_app.cli" else [])],
            env=self.env, cwd=self.data_dir,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def topic(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    async def wait_ready(self, session: aiohttp.ClientSession, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: see {self.data_dir / 'worker.log'}")
            try:
                async with session.get(self.url + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise SystemExit("worker not ready in time")

    def cpu_seconds(self) -> float:
        """User + system CPU the worker process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ResultClock:
    """Follows ``pre-order-results`` from its end: arrival time and value per orderId."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=5, max_partition_fetch_bytes=8_000_000)
        await consumer.start()
        try:
            await assign_from_end(consumer, self.topic)
            self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=20_000)
                now = time.perf_counter()
                for records in batch.values():
                    for record in records:
                        key = record.key.decode() if record.key else ""
                        if key not in self.seen:
                            self.seen[key] = (now, orjson.loads(record.value))
        finally:
            await consumer.stop()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wait_for(self, ids: set[str], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if ids <= self.seen.keys():
                return True
            await asyncio.sleep(0.05)
        return False


async def steady_http(session: aiohttp.ClientSession, worker: Worker, rate: int, seconds: float,
                      tag: str) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(i: int) -> None:
        body = orjson.dumps(pre_order(f"{tag}-{i}", f"LAT-{i % 16}"))
        started = time.perf_counter()
        async with session.post(worker.url + "/pre-orders", data=body,
                                headers={"Content-Type": "application/json",
                                         "X-API-Key": SERVICE_KEY}) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200:
                latencies.append((time.perf_counter() - started) * 1000)

    total = int(rate * seconds)
    cpu = worker.cpu_seconds()
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    cpu_ms = (worker.cpu_seconds() - cpu) * 1000
    return {"rate": rate, "requests": total, "statuses": statuses,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan")),
            "cpu_ms_per_decision": cpu_ms / max(1, statuses.get(200, 0) + statuses.get(202, 0))}


async def steady_topic(producer: AIOKafkaProducer, clock: ResultClock, worker: Worker, rate: int,
                       seconds: float, tag: str, by_sku: bool = True) -> dict[str, Any]:
    sent: dict[str, float] = {}
    total = int(rate * seconds)
    cpu = worker.cpu_seconds()
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        order_id = f"{tag}-{i}"
        sent[order_id] = time.perf_counter()
        sku = f"LAT-{i % 16}"
        key = f"{sku}|{LOC}" if by_sku else order_id
        await producer.send(worker.topic("pre-orders"), orjson.dumps(pre_order(order_id, sku)),
                            key=key.encode())
    await clock.wait_for(set(sent), 60)
    cpu_ms = (worker.cpu_seconds() - cpu) * 1000
    latencies = [(clock.seen[o][0] - t) * 1000 for o, t in sent.items() if o in clock.seen]
    return {"rate": rate, "orders": total, "decided": len(latencies),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan")),
            "cpu_ms_per_decision": cpu_ms / max(1, len(latencies))}


async def floor(bootstrap: str, rate_seconds: list[tuple[int, float]]) -> dict[str, Any]:
    """The same steady topic-to-result runs against ``bench.floor_worker`` (same set-up,
    no decisions): the latency of Faust + broker + load generator on this machine."""
    worker = Worker(bootstrap, f"bf-{uuid.uuid4().hex[:6]}", module="bench.floor_worker")
    out: dict[str, Any] = {}
    clock = ResultClock(bootstrap, worker.topic("pre-order-results"))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    try:
        await producer.start()
        deadline = time.monotonic() + 120
        await clock.start()
        while "probe" not in clock.seen:  # ready = answers
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                worker.log.flush()
                tail = (worker.data_dir / "worker.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"floor worker not answering; its log ends:\n{tail}")
            await producer.send(worker.topic("pre-orders"), orjson.dumps(pre_order("probe", "LAT-0")),
                                key=f"LAT-0|{LOC}".encode())
            await clock.wait_for({"probe"}, 1.0)
        await steady_topic(producer, clock, worker, 50, 2, "warm")
        for rate, seconds in rate_seconds:
            out[f"floor_{rate}"] = got = await steady_topic(producer, clock, worker, rate, seconds, f"f{rate}")
            print(f"(b) FLOOR topic to result at {rate}/s (bench.floor_worker: no decisions): "
                  f"p50 {got['p50_ms']:.1f} ms  p99 {got['p99_ms']:.1f} ms  "
                  f"decided {got['decided']}/{got['orders']}  "
                  f"CPU {got['cpu_ms_per_decision']:.2f} ms/answer", flush=True)
    finally:
        await producer.stop()
        await clock.stop()
        worker.stop()
    return out


async def fetch_queue(session: aiohttp.ClientSession, worker: Worker, sku: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        url = f"{worker.url}/queues/{sku}/{LOC}/{SHIP}?limit=10000&offset={len(entries)}"
        async with session.get(url, headers={"X-API-Key": SERVICE_KEY}) as response:
            page = await response.json()
        entries.extend(page["entries"])
        if not page["entries"] or len(entries) >= page["depth"]:
            return entries


def priority(entry: dict[str, Any]) -> tuple[int, int]:
    return (-SCORES[entry["tier"]], entry["sequence"])


async def burst(session: aiohttp.ClientSession, clock: ResultClock, worker: Worker, bootstrap: str,
                orders: int, units: int, rate: float, by_sku: bool) -> dict[str, Any]:
    sku = f"LAUNCH-{'SKU' if by_sku else 'ORDER'}-KEYED"
    await preload(bootstrap, worker.topic("inventory-changes"), [stock(sku, units)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{worker.url}/inventory/{sku}/{LOC}") as response:
            if response.status == 200 and (await response.json())["atp"] == units:
                break
        await asyncio.sleep(0.1)
    rng = random.Random(7)
    tiers = ["PLATINUM"] * (orders // 50) + ["VIP"] * (orders // 10)
    tiers += ["STANDARD"] * (orders - len(tiers))
    rng.shuffle(tiers)
    prefix = "BS" if by_sku else "BO"
    values = [pre_order(f"{prefix}-{i}", sku, tier) for i, tier in enumerate(tiers)]
    ids = {v["orderId"] for v in values}
    key = f"{sku}|{LOC}".encode()
    started = time.perf_counter()
    produce_s = await preload(
        bootstrap, worker.topic("pre-orders"), values,
        key=(lambda _v: key) if by_sku else (lambda v: v["orderId"].encode()),
    )
    complete = await clock.wait_for(ids, 600)
    last = max(clock.seen[o][0] for o in ids if o in clock.seen)
    decide_s = last - started

    entries = await fetch_queue(session, worker, sku)
    reserved = [e for e in entries if e["status"] == "RESERVED"]
    limit = int(rate * units + 1e-9)
    rejected = [clock.seen[o][1]["failedItems"][0] for o in ids
                if o in clock.seen and clock.seen[o][1]["failedItems"]]
    order_ok = (
        [e["queuePosition"] for e in entries] == list(range(1, len(entries) + 1))
        and [e["status"] for e in entries] == ["RESERVED"] * len(reserved) + ["WAITLISTED"] * (len(entries) - len(reserved))
        and sorted(entries, key=priority) == entries
        and all(priority(r) > priority(reserved[-1]) for r in rejected if reserved)
    )
    by_tier: dict[str, dict[str, int]] = {}
    for e in entries + [{**r, "status": "REJECTED"} for r in rejected]:
        counts = by_tier.setdefault(e["tier"], {})
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return {
        "orders": orders, "units": units, "limit": limit, "all_decided": complete,
        "decided": sum(o in clock.seen for o in ids), "produce_seconds": produce_s,
        "decide_seconds": decide_s, "per_second": orders / decide_s,
        "reserved_units": sum(e["quantity"] for e in reserved),
        "oversell": max(0, sum(e["quantity"] for e in reserved) - limit),
        "tier_order_exact": order_ok, "by_tier": by_tier,
    }


async def product(args: argparse.Namespace, broker: EmbeddedBroker) -> dict[str, Any]:
    """(a), (b) and (c) against one real ``stream-app worker``."""
    worker = Worker(broker.bootstrap, f"bp-{uuid.uuid4().hex[:6]}")
    out: dict[str, Any] = {}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await worker.wait_ready(session)
            await preload(broker.bootstrap, worker.topic("inventory-changes"),
                          [stock(f"LAT-{i}", 1_000_000) for i in range(16)])
            clock = ResultClock(broker.bootstrap, worker.topic("pre-order-results"))
            await clock.start()
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
            await producer.start()
            try:
                await steady_http(session, worker, 50, 2, "warm")  # JIT-free warm-up: connections, caches
                for rate in args.rates:
                    if args.topic_only:  # (b) keyed by sku|location only, on a fresh worker
                        out[f"topic_{rate}"] = got = await steady_topic(
                            producer, clock, worker, rate, args.seconds, f"topic_{rate}-")
                        print(f"(b) topic to result at {rate}/s, keyed by sku|location: p50 {got['p50_ms']:.1f} ms  "
                              f"p99 {got['p99_ms']:.1f} ms  decided {got['decided']}/{got['orders']}  "
                              f"CPU {got['cpu_ms_per_decision']:.2f} ms/decision", flush=True)
                        continue
                    out[f"http_{rate}"] = await steady_http(session, worker, rate, args.seconds, f"h{rate}")
                    got = out[f"http_{rate}"]
                    print(f"(a) POST /pre-orders at {rate}/s : p50 {got['p50_ms']:.1f} ms  "
                          f"p99 {got['p99_ms']:.1f} ms  max {got['max_ms']:.1f} ms  statuses {got['statuses']}  "
                          f"CPU {got['cpu_ms_per_decision']:.2f} ms/decision", flush=True)
                    if args.http_only:
                        continue
                    for name, by_sku in ((f"topic_{rate}", True), (f"topic_{rate}_by_order", False)):
                        out[name] = got = await steady_topic(
                            producer, clock, worker, rate, args.seconds, f"{name}-", by_sku)
                        print(f"(b) topic to result at {rate}/s, keyed by {'sku|location' if by_sku else 'orderId (baseline)'}: "
                              f"p50 {got['p50_ms']:.1f} ms  p99 {got['p99_ms']:.1f} ms  "
                              f"decided {got['decided']}/{got['orders']}  "
                              f"CPU {got['cpu_ms_per_decision']:.2f} ms/decision", flush=True)
                    ratio = out[f"topic_{rate}_by_order"]["p99_ms"] / out[f"topic_{rate}"]["p99_ms"]
                    print(f"    p99 keyed by orderId / keyed by sku|location = {ratio:.2f}", flush=True)
                skip_burst = args.topic_only or args.http_only
                for name, by_sku in (() if skip_burst else (("burst", False), ("burst_by_sku", True))):
                    out[name] = result = await burst(session, clock, worker, broker.bootstrap,
                                                     args.burst, args.units, 1.05, by_sku)
                    print(f"(c) burst {result['orders']:,} orders vs {result['units']:,} units, keyed by "
                          f"{'sku|location' if by_sku else 'orderId'}: decided "
                          f"{result['decided']:,} in {result['decide_seconds']:.1f} s ({result['per_second']:,.0f}/s, target <= 60 s); "
                          f"reserved {result['reserved_units']} of limit {result['limit']}, oversell {result['oversell']}, "
                          f"tier order exact: {result['tier_order_exact']}", flush=True)
                    print(f"    by tier: {result['by_tier']}")
            finally:
                await producer.stop()
                await clock.stop()
    finally:
        worker.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        rates = [(rate, args.seconds) for rate in args.rates]
        if args.floor_only:
            return await floor(broker.bootstrap, rates)
        out = await product(args, broker)
        if not args.no_floor:  # after the product's worker stopped: nothing else runs
            out.update(await floor(broker.bootstrap, rates))
            for rate in args.rates:
                floor_p99 = out[f"floor_{rate}"]["p99_ms"]
                for path in ("topic", "http"):
                    if f"{path}_{rate}" in out:
                        got = out[f"{path}_{rate}"]
                        print(f"    {path} at {rate}/s: p99 / floor p99 = {got['p99_ms'] / floor_p99:.2f} "
                              f"(target <= 2 for http), CPU per decision / floor = "
                              f"{got['cpu_ms_per_decision'] / out[f'floor_{rate}']['cpu_ms_per_decision']:.2f}",
                              flush=True)
    finally:
        broker.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short run (< 2 minutes)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per steady rate")
    parser.add_argument("--burst", type=int, default=50_000, help="orders in the launch burst")
    parser.add_argument("--units", type=int, default=5_000, help="units of the launch SKU")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor runs (bench.floor_worker)")
    parser.add_argument("--floor-only", action="store_true", help="only the floor runs")
    parser.add_argument("--http-only", action="store_true",
                        help="only (a): POST /pre-orders at each rate (then the floor unless --no-floor)")
    parser.add_argument("--topic-only", action="store_true",
                        help="only (b) keyed by sku|location (and the floor): no POST, no baseline, no burst")
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[200, 500],
                        help="steady rates, comma-separated (default 200,500)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.burst, args.units = 4.0, 10_000, 1_000
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
