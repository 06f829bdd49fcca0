"""Release benchmark (issue 5): 100,000 reservations over 100 SKU/locations on one worker.

Starts its own embedded broker, the Fluent simulator and one ``stream-app worker`` (real
processes), loads stock and pre-orders through the contract topics, waits until every
reservation is decided, then triggers a release through ``POST /admin/release`` and
measures until the run report says completed: time to finish and orders created per
second (the report's own duration: first allocation to last order applied).

Pre-orders carry ``--items`` items each (one per SKU/location, default 100) so that the
intake is not what the benchmark measures; the release itself is per reservation.

Usage: python bench/release.py [--quick] [--reservations N] [--keys N] [--concurrency N] [--per-request N]
                               [--items N] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, preload, python_path  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port, stop_process  # noqa: E402

PARTITIONS = 8
KEY = "bench-admin-key"
LOC = "DC-1"
http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=120.0), retries=False)


def get(url: str) -> tuple[int, Any]:
    response = http.request("GET", url)
    try:
        return response.status, orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return response.status, None


def wait(condition: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def start(
    command: str, env: dict[str, str], log: Path, profile: str | None = None
) -> subprocess.Popen[bytes]:
    args = ["-m", "stream_app.cli", command]
    if profile:  # the whole worker under cProfile, written when it stops
        args = ["-m", "cProfile", "-o", profile, "-m", "stream_app.cli", command]
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": python_path(), **env},
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=env.get("STREAM_APP_DATA_DIR", str(ROOT)),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10,000 reservations")
    parser.add_argument("--reservations", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100, help="SKU/locations")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="createOrder requests in flight")
    parser.add_argument("--per-request", type=int, default=50,
                        help="createOrder mutations per GraphQL request")
    parser.add_argument("--items", type=int, default=100,
                        help="items per pre-order (one per SKU/location): bulk intake")
    parser.add_argument("--profile", help="write a cProfile of the worker to this file")
    args = parser.parse_args()
    total = 10_000 if args.quick else args.reservations
    per_key = total // args.keys
    total = per_key * args.keys
    ship = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()

    work = Path(tempfile.mkdtemp(prefix="bench-release-"))
    broker = EmbeddedBroker(port=free_port()).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim_port, web_port = free_port(), free_port()
        sim_url, web = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
        procs.append(start("fluent-sim", {"STREAM_APP_FLUENT_SIM_PORT": str(sim_port),
                                          "STREAM_APP_LOG_LEVEL": "WARNING"}, work / "sim.log"))
        wait(lambda: get(sim_url + "/_sim/orders")[0] == 200, 30, "simulator")
        app_id = f"bench-rel-{uuid.uuid4().hex[:6]}"
        env = {
            "STREAM_APP_KAFKA_BROKER": broker.bootstrap, "STREAM_APP_APP_ID": app_id,
            "STREAM_APP_PARTITIONS": str(PARTITIONS), "STREAM_APP_CORRECT_END_OFFSETS": "true",
            "STREAM_APP_FLUENT_BASE_URL": sim_url, "STREAM_APP_WEB_PORT": str(web_port),
            "STREAM_APP_DATA_DIR": str(work), "STREAM_APP_ADMIN_API_KEY": KEY,
            "STREAM_APP_MIN_DAYS_AHEAD": "0", "STREAM_APP_COMMIT_REQUIRED": "false",
            "STREAM_APP_FLUSH_INTERVAL_SECONDS": "600",
            # INFO, not WARNING: at WARNING, Faust's terminal spinner sets the root logger to
            # DEBUG and every library debug call builds a log record (~10% of the CPU)
            "STREAM_APP_LOG_LEVEL": "INFO",
            "STREAM_APP_RELEASE_ORDER_CONCURRENCY": str(args.concurrency),
            "STREAM_APP_RELEASE_ORDERS_PER_REQUEST": str(args.per_request),
            "STREAM_APP_RELEASE_CATCH_UP": "false",
        }
        procs.append(start("worker", env, work / "worker.log", args.profile))
        wait(lambda: get(web + "/health")[1]["ready"], 120, "worker ready")

        skus = [f"BENCH-{k:03d}" for k in range(args.keys)]
        stock = [
            {"eventId": f"s-{sku}", "channel": "WMS", "sku": sku, "location": LOC,
             "onHand": per_key, "reserved": 0, "updatedAt": "2026-01-01T00:00:00Z"}
            for sku in skus
        ]
        asyncio.run(preload(broker.bootstrap, "inventory-changes", stock))
        wait(lambda: all(get(f"{web}/inventory/{s}/{LOC}")[1].get("atp") == per_key
                         for s in (skus[0], skus[-1])), 60, "stock applied")
        items = max(1, min(args.items, args.keys))
        orders = []
        for n in range(total // items):
            first = (n * items) % args.keys
            orders.append({
                "orderId": f"B{n}", "customerId": f"c{n}", "customerEmail": f"c{n}@example.com",
                "customerTier": "VIP" if n % 10 == 0 else "STANDARD", "shipDate": ship,
                "source": "bench",
                "items": [{"sku": skus[(first + i) % args.keys], "productName": "Console",
                           "quantity": 1, "locationRef": LOC} for i in range(items)],
            })
        started = time.perf_counter()
        asyncio.run(preload(broker.bootstrap, "pre-orders", orders))

        def held(sku: str) -> int:
            return int(get(f"{web}/inventory/{sku}/{LOC}")[1].get("preOrderHeldUnits") or 0)

        def decided() -> bool:
            # the last SKUs' queues fill last; then check all of them once
            return all(held(s) == per_key for s in skus[-3:]) and all(
                held(s) == per_key for s in skus
            )

        wait(decided, 1200, "every reservation decided", interval=2.0)
        # and collected: the pipeline's own writes are (nearly) done before the release
        last = len(orders)
        wait(lambda: all(get(f"{web}/pre-orders/B{n}")[0] == 200 for n in range(max(0, last - 20), last)),
             600, "pre-order results collected", interval=1.0)
        intake_s = time.perf_counter() - started
        print(f"intake: {total:,} pre-orders decided in {intake_s:.1f}s", flush=True)

        response = http.request("POST", f"{web}/admin/release?date={ship}", headers={"X-API-Key": KEY})
        assert response.status == 202, response.data
        run_id = orjson.loads(response.data)["runId"]
        requested = time.perf_counter()

        def finished() -> dict[str, Any] | None:
            code, body = get(f"{web}/releases/{run_id}")
            return body if code == 200 and body.get("state", "").startswith("completed") else None

        report = wait(finished, 1800, "release completed", interval=0.5)
        wall = time.perf_counter() - requested
        created = report["orders"]["created"] + report["orders"]["alreadyExisted"]
        sim_orders = get(sim_url + "/_sim/orders")[1]
        refs = {o["ref"] for o in sim_orders}
        figures = {
            "reservations": total, "keys": args.keys, "partitions": PARTITIONS,
            "concurrency": args.concurrency,
            "release_wall_seconds": round(wall, 2),
            "release_report_seconds": report["durationSeconds"],
            "orders_created": created, "orders_in_simulator": len(sim_orders),
            "unique_refs": len(refs), "orders_per_second": round(created / wall, 1),
            "totals": report["totals"], "failed": report["orders"]["failed"],
            "intake_seconds": round(intake_s, 1),
        }
        print(f"release of {total:,} reservations over {args.keys} SKU/locations: "
              f"{wall:.1f}s wall ({report['durationSeconds']:.1f}s in the report), "
              f"{created / wall:,.0f} orders/s, {len(sim_orders):,} orders in the simulator "
              f"(target <= 60 s)")
        print(json.dumps(figures))
        print(json.dumps([p.get("timings") for p in report["partitions"]]))
    finally:
        for proc in reversed(procs):
            stop(proc)
        broker.stop()
        if not args.profile:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
