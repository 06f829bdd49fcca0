"""Catalogue-scale benchmark (issue 12): one worker at 100k and 1M SKU/locations.

For each catalogue size, on its own embedded broker, real ``stream-app worker`` processes:

1. the initial load: 3 channels per SKU/location in envelopes of 500 records, channel by
   channel (as each channel's snapshot arrives), preloaded; records/s from the first
   record applied to the last;
2. a steady stream of single-record events over the whole key space (preloaded), with
   ``GET /inventory`` p50/p99 sampled while it runs; events/s against (0);
3. changelog bytes per record and the largest changelog message (the inventory and
   fluent_accepted changelogs read back whole);
4. worker RSS;
5. restart to ready with local state kept, after a clean stop and after kill -9;
6. a worker with an EMPTY data dir rebuilding from the changelog;
7. two workers with a standby replica: kill -9 one, time until the survivor serves
   every key of a sample from each partition.

(0), the baseline measured in the same run: a bare Faust agent decoding single-record
events (bench/ingest.py's, same broker, same partitions).
Usage: python bench/scale.py [--keys 100000,1000000] [--events N] [--quick]
(``--quick``: the bare baseline (0), the load and the stream only, steps 1, 2 and 4's first figure)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.common import ROOT, preload  # noqa: E402
from bench.ingest import measure  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port  # noqa: E402
from tests.fixtures.procs import StreamAppProcess, http, wait_for  # noqa: E402

PARTITIONS = 8
CHANNELS = ("WMS", "STORE", "MARKETPLACE")
ENVELOPE = 500
BASE_US = 1_795_000_000_000_000


def key_of(n: int) -> tuple[str, str]:
    return f"SKU-{n // 20}", f"LOC-{n % 20}"


def record(n: int, channel: str, seq: int) -> dict[str, Any]:
    sku, location = key_of(n)
    return {
        "eventId": f"{channel}-{seq}", "channel": channel, "sku": sku, "location": location,
        "onHand": 10 + seq % 90, "reserved": seq % 3,
        "updatedAt": (BASE_US + seq) // 1000,
    }


def envelopes(keys: int) -> list[bytes]:
    out: list[bytes] = []
    seq = 0
    for channel in CHANNELS:
        for start in range(0, keys, ENVELOPE):
            batch = []
            for n in range(start, min(start + ENVELOPE, keys)):
                batch.append(record(n, channel, seq))
                seq += 1
            out.append(orjson.dumps({"records": batch}))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Cluster:
    def __init__(self, bootstrap: str, root: Path, app_id: str) -> None:
        self.bootstrap, self.root, self.app_id = bootstrap, root, app_id
        self.topic = f"{app_id}-inventory-changes"

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "STREAM_APP_KAFKA_BROKER": self.bootstrap, "STREAM_APP_APP_ID": self.app_id,
            "STREAM_APP_PARTITIONS": str(PARTITIONS), "STREAM_APP_DATA_DIR": str(data_dir),
            "STREAM_APP_WEB_PORT": str(free_port()), "STREAM_APP_LOG_LEVEL": "WARNING",
            "STREAM_APP_TOPIC_INVENTORY_CHANGES": self.topic,
            "STREAM_APP_BROKER_SESSION_TIMEOUT": "6",
            "STREAM_APP_FLUENT_BASE_URL": "http://127.0.0.1:9",  # no Fluent: sync backs off
            **extra,
        }

    def worker(self, data_dir: Path, **extra: str) -> StreamAppProcess:
        env = self.env(data_dir, **extra)
        return StreamAppProcess("worker", env, data_dir / "worker.log").start()


PERIOD = 0.02  # seconds between two GETs of the sampler


class Sampler(threading.Thread):
    """``GET /inventory`` of random keys, 50 a second, while the stream runs: each at its
    own time (every 20 ms from the start; at once when the one before took longer), so
    the load on the worker does not depend on how fast it answers (a GET 20 ms after the
    last answer made ~40 GETs a second at 4 ms and ~30 at 13 ms)."""

    def __init__(self, proc: StreamAppProcess, keys: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.keys = proc, keys
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        rng = random.Random(2)
        due = time.perf_counter()
        while True:
            due += PERIOD
            if self.done.wait(max(0.0, due - time.perf_counter())):
                break
            started = time.perf_counter()
            status, _ = inventory_of(self.proc, rng.randrange(self.keys))
            self.latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200, status

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def gc_pauses(proc: StreamAppProcess) -> dict[str, tuple[float, float, float]]:
    """Per generation: (collections, seconds, collections over 10 ms) so far."""
    samples = proc.metrics()
    out: dict[str, tuple[float, float, float]] = {}
    for generation in "012":
        label = f'generation="{generation}"'
        count = samples.get(f"stream_app_gc_pause_seconds_count{{{label}}}", 0.0)
        total = samples.get(f"stream_app_gc_pause_seconds_sum{{{label}}}", 0.0)
        quick = samples.get(f'stream_app_gc_pause_seconds_bucket{{{label},le="0.01"}}', 0.0)
        out[generation] = (count, total, count - quick)
    return out


def gc_during(before: dict[str, tuple[float, float, float]],
              after: dict[str, tuple[float, float, float]]) -> str:
    parts = []
    for generation, (count, total, slow) in after.items():
        was = before.get(generation, (0.0, 0.0, 0.0))
        parts.append(f"gen{generation} {count - was[0]:.0f} ({(total - was[1]) * 1000:.0f} ms, "
                     f"{slow - was[2]:.0f} over 10 ms)")
    return ", ".join(parts)


def applied(proc: StreamAppProcess) -> float:
    return proc.metrics().get("stream_app_inventory_records_applied_total", 0.0)


def timed_apply(proc: StreamAppProcess, total: int, timeout: float) -> tuple[float, float]:
    """(seconds from the first applied record to ``total``, records/s)."""
    first = wait_for(lambda: (applied(proc) > 0) and time.perf_counter(), timeout, 0.05, "first apply")
    start_count = applied(proc)
    wait_for(lambda: applied(proc) >= total, timeout, 0.2, f"{total} records applied")
    seconds = time.perf_counter() - first
    return seconds, (total - min(start_count, total * 0.01)) / seconds


def ready_seconds(proc: StreamAppProcess, timeout: float) -> float:
    started = time.perf_counter()
    proc.wait_ready(timeout)
    return time.perf_counter() - started


async def changelog_sizes(bootstrap: str, topics: list[str]) -> dict[str, float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8_000_000, fetch_max_bytes=64_000_000)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = total = largest = 0
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            if not batch:
                idle += 1
                continue
            idle = 0
            for records in batch.values():
                for rec in records:
                    size = len(rec.key or b"") + len(rec.value or b"")
                    count += 1
                    total += size
                    largest = max(largest, size)
        return {"messages": count, "bytes": total, "largest": largest}
    finally:
        await consumer.stop()


def inventory_of(proc: StreamAppProcess, n: int) -> tuple[int, Any]:
    sku, location = key_of(n)
    return http("GET", f"{proc.url}/inventory/{sku}/{location}")


def sample_keys(keys: int, per_partition: int = 5) -> list[int]:
    from stream_app.partitioning import partition_for

    found: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    rng = random.Random(7)
    while any(len(v) < per_partition for v in found.values()):
        n = rng.randrange(keys)
        part = found[partition_for("|".join(key_of(n)), PARTITIONS)]
        if len(part) < per_partition:
            part.append(n)
    return [n for v in found.values() for n in v]


def run_size(keys: int, events: int, bare_per_s: float, quick: bool = False) -> dict[str, Any]:
    broker = EmbeddedBroker(port=free_port()).start()
    root = Path(tempfile.mkdtemp(prefix=f"scale-{keys}-"))
    app_id = f"scale{keys}-{uuid.uuid4().hex[:4]}"
    cluster = Cluster(broker.bootstrap, root, app_id)
    out: dict[str, Any] = {"keys": keys, "records": keys * len(CHANNELS)}
    procs: list[StreamAppProcess] = []
    try:
        # topics and layout first (the worker creates them), then preload the load
        first = cluster.worker(root / "w1")
        procs.append(first)
        first.wait_ready(180)
        loads = envelopes(keys)
        out["preload_seconds"] = asyncio.run(preload(broker.bootstrap, cluster.topic, loads))
        total = keys * len(CHANNELS)
        seconds, per_s = timed_apply(first, total, 3600)
        out["load_seconds"], out["load_records_per_s"] = seconds, per_s
        out["rss_mb_after_load"] = rss_mb(first.proc.pid)  # type: ignore[union-attr]
        print(f"  [{keys:,}] initial load: {per_s:,.0f} records/s ({seconds:.0f} s)", flush=True)

        # steady stream of single-record events over the whole key space + GET latencies
        rng = random.Random(1)
        singles = [
            orjson.dumps(record(rng.randrange(keys), rng.choice(CHANNELS), total + i))
            for i in range(events)
        ]
        base = applied(first)  # before the preload: the worker starts on it at once
        asyncio.run(preload(broker.bootstrap, cluster.topic, singles))
        sampler = Sampler(first, keys)
        first_seen = wait_for(lambda: applied(first) > base and time.perf_counter(), 120, 0.02, "stream")
        sampler.start()
        gc_before = gc_pauses(first)
        # each /metrics scrape costs the worker ~2.5 ms on a quiet machine (20 a second took
        # 5 % of it; the baseline counts in-process), one step of its loop that a GET may
        # wait behind: polled twice a second until 90 % of the stream is applied, then 20
        # times a second for the end (a Prometheus scrapes every 15-60 s)
        goal = base + events
        wait_for(lambda: applied(first) >= base + events * 0.9, 3600, 0.5, "stream mostly applied")
        wait_for(lambda: applied(first) >= goal, 3600, 0.05, "stream applied")
        sampler.stop()
        out["gc_during_stream"] = gc_during(gc_before, gc_pauses(first))
        latencies = sampler.latencies
        stream_s = time.perf_counter() - first_seen
        out["stream_events_per_s"] = events / stream_s
        out["stream_ratio_to_bare"] = out["stream_events_per_s"] / bare_per_s
        latencies.sort()
        out["get_p50_ms"] = statistics.median(latencies)
        out["get_p99_ms"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        out["get_samples"] = len(latencies)
        out["rss_mb_after_stream"] = rss_mb(first.proc.pid)  # type: ignore[union-attr]
        print(f"  [{keys:,}] steady stream: {out['stream_events_per_s']:,.0f} events/s, "
              f"GET p99 {out['get_p99_ms']:.1f} ms; GC: {out['gc_during_stream']}", flush=True)
        if quick:  # --quick: the load and the stream only (iterating on the apply path)
            return out

        sizes = asyncio.run(changelog_sizes(
            broker.bootstrap, [f"{app_id}-inventory-changelog", f"{app_id}-fluent_accepted-changelog"]
        ))
        out["changelog"] = sizes
        out["changelog_bytes_per_record"] = sizes["bytes"] / (total + events)

        # restarts with local state kept
        first.stop(60)
        restarted = cluster.worker(root / "w1")
        procs.append(restarted)
        out["restart_clean_to_ready_s"] = ready_seconds(restarted, 600)
        restarted.kill()
        killed = cluster.worker(root / "w1")
        procs.append(killed)
        out["restart_after_kill_to_ready_s"] = ready_seconds(killed, 600)
        probe = sample_keys(keys)
        assert all(inventory_of(killed, n)[0] == 200 for n in probe)
        killed.stop(60)
        print(f"  [{keys:,}] restart to ready: {out['restart_clean_to_ready_s']:.1f} s clean, "
              f"{out['restart_after_kill_to_ready_s']:.1f} s after kill -9", flush=True)

        # an empty data dir rebuilds from the changelog
        empty = cluster.worker(root / "empty")
        procs.append(empty)
        out["rebuild_empty_to_ready_s"] = ready_seconds(empty, 3600)
        expected = {n: inventory_of(empty, n)[1] for n in probe}
        out["rss_mb_rebuilt"] = rss_mb(empty.proc.pid)  # type: ignore[union-attr]
        print(f"  [{keys:,}] rebuild from an empty data dir: {out['rebuild_empty_to_ready_s']:.1f} s",
              flush=True)

        # two workers with a standby: kill one, the survivor serves every key
        second = cluster.worker(root / "standby", STREAM_APP_TABLE_STANDBY_REPLICAS="1")
        procs.append(second)
        second.wait_ready(3600)

        def split() -> bool:
            mine = set(http("GET", f"{empty.url}/health")[1].get("partitions", []))
            theirs = set(http("GET", f"{second.url}/health")[1].get("partitions", []))
            return bool(mine) and bool(theirs) and not mine & theirs
        wait_for(split, 600, 0.5, "partitions split between the two workers")
        standby_synced = time.perf_counter()
        theirs = set(range(PARTITIONS)) - set(http("GET", f"{second.url}/health")[1]["partitions"])
        wait_for(lambda: standby_caught_up(broker.bootstrap, app_id, root / "standby", theirs),
                 3600, 1.0, "standby caught up")
        out["standby_catch_up_s"] = time.perf_counter() - standby_synced
        empty.kill()
        killed_at = time.perf_counter()

        def serves_all() -> bool:
            return all(inventory_of(second, n) == (200, expected[n]) for n in probe)
        wait_for(serves_all, 600, 0.2, "survivor serves every key")
        out["standby_takeover_s"] = time.perf_counter() - killed_at
        print(f"  [{keys:,}] standby takeover after kill -9: {out['standby_takeover_s']:.1f} s", flush=True)
    finally:
        for proc in procs:
            proc.stop(30)
        broker.stop()
    return out


#: Faust applies a standby's changelog records in groups of the table's standby buffer
#: (1,000): up to that many of the newest stay in memory until more arrive
STANDBY_BUFFER = 1000


def standby_caught_up(bootstrap: str, app_id: str, data_dir: Path, partitions: set[int]) -> bool:
    """The standby worker's local inventory databases of ``partitions`` hold their
    changelog up to Faust's standby buffer (persisted offsets, read read-only beside it)."""
    from faust.types import TP

    from stream_app.broker.tansu_offsets import true_end_offsets
    from stream_app.local_state import persisted_offset

    topic = f"{app_id}-inventory-changelog"
    ends = asyncio.run(true_end_offsets(bootstrap, [TP(topic, p) for p in partitions]))
    for p in partitions:
        found = list(data_dir.glob(f"**/tables/inventory-{p}.db"))
        offset = persisted_offset(found[0]) if found else None
        if offset is None or offset < ends[TP(topic, p)] - 1 - STANDBY_BUFFER:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", default="100000,1000000")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true",
                        help="only the bare baseline, the initial load and the steady stream")
    args = parser.parse_args()
    sizes = [int(k) for k in args.keys.split(",")]

    broker = EmbeddedBroker(port=free_port()).start()
    try:
        rng = random.Random(3)
        singles = [orjson.dumps(record(rng.randrange(10_000), "WMS", i)) for i in range(args.events)]
        bare = measure("bare", broker.bootstrap, singles, args.events)
        # (0') is a reference figure, no target's baseline: --quick leaves it out
        plain = None if args.quick else measure("table", broker.bootstrap, singles, args.events)
    finally:
        broker.stop()
    print(f"(0) bare Faust agent, decode only: {bare['per_second']:,.0f} events/s", flush=True)
    if plain is not None:
        print(f"(0') plain Faust agent, per-key RocksDB table write per event: "
              f"{plain['per_second']:,.0f} events/s", flush=True)
    results = [run_size(keys, args.events, bare["per_second"], args.quick) for keys in sizes]
    if plain is None:
        print(json.dumps({"bare": bare, "sizes": results}))
        return
    for r in results:
        r["stream_ratio_to_plain_table"] = r["stream_events_per_s"] / plain["per_second"]
    for r in results:
        print(f"\n{r['keys']:,} SKU/locations ({r['records']:,} records):")
        print(f"  initial load            {r['load_records_per_s']:>10,.0f} records/s   (target >= 20,000)")
        print(f"  steady single records   {r['stream_events_per_s']:>10,.0f} events/s    "
              f"ratio to (0) {r['stream_ratio_to_bare']:.2f}, to (0') "
              f"{r['stream_ratio_to_plain_table']:.2f} (target >= 2)")
        print(f"  GET /inventory          p50 {r['get_p50_ms']:.1f} ms  p99 {r['get_p99_ms']:.1f} ms "
              f"({r['get_samples']} samples; target p99 <= 20 ms)")
        c = r["changelog"]
        print(f"  changelog               {r['changelog_bytes_per_record']:.0f} bytes/record, "
              f"largest message {c['largest']:,} bytes (target <= 262,144), {c['messages']:,} messages")
        print(f"  RSS                     {r['rss_mb_after_load']:.0f} MB after load, "
              f"{r['rss_mb_after_stream']:.0f} MB after stream, {r['rss_mb_rebuilt']:.0f} MB rebuilt")
        print(f"  restart to ready        {r['restart_clean_to_ready_s']:.1f} s clean, "
              f"{r['restart_after_kill_to_ready_s']:.1f} s after kill -9 (target <= 30 s)")
        print(f"  rebuild, empty data dir {r['rebuild_empty_to_ready_s']:.1f} s")
        print(f"  standby takeover        {r['standby_takeover_s']:.1f} s after kill -9 (target <= 15 s)")
    print(json.dumps({"bare": bare, "plain_table": plain, "sizes": results}))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
