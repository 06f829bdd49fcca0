"""S3 CSV channel benchmark (issue 13): a CSV of N rows dropped in S3 (moto server on
loopback) into ATP, against the envelope ingest of the same records, in the same run.

For each size, alternating the two variants on one embedded broker, each on a fresh app
id and a fresh ``stream-app worker`` process:

(0) envelopes: the N records preloaded on ``inventory-changes`` as envelopes of 500;
    records/s from the first record applied to the last;
(1) CSV: one object of N rows in S3, the worker's S3 channel (ranged GETs, envelopes of
    500 parsed in its parse process, coalesced checkpoints, rejection report, archive);
    rows/s the same way, and the RSS of the worker and its parse process sampled while
    it runs (peak above the RSS before the drop).

Target: (1) / (0) >= 0.8; the RSS the CSV adds (peak growth of (1) minus that of (0),
which holds the same keys) flat in the file size.
Usage: python bench/channels.py [--rows 100000,1000000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
import orjson  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from bench.common import preload  # noqa: E402
from bench.scale import PARTITIONS, Cluster, rss_mb, timed_apply  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port  # noqa: E402
from tests.fixtures.procs import StreamAppProcess, children, wait_for  # noqa: E402

ENVELOPE = 500
KEY_ID = SECRET = "bench"


def row(n: int) -> tuple[str, str, int, int]:
    return f"SKU-{n // 20}", f"LOC-{n % 20}", 10 + n % 90, n % 3


def envelopes(rows: int) -> list[bytes]:
    out = []
    for start in range(0, rows, ENVELOPE):
        batch = []
        for n in range(start, min(start + ENVELOPE, rows)):
            sku, loc, on_hand, reserved = row(n)
            batch.append({"eventId": f"e-{n}", "channel": "CSV", "sku": sku, "location": loc,
                          "onHand": on_hand, "reserved": reserved, "updatedAt": 1_795_000_000_000})
        out.append(orjson.dumps({"records": batch}))
    return out


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("SKU,Store,Qty,Held\n")
        for n in range(rows):
            sku, loc, on_hand, reserved = row(n)
            f.write(f"{sku},{loc},{on_hand},{reserved}\n")


def tree_rss_mb(pid: int) -> float:
    """The RSS of the worker and its children (the CSV's parse process)."""
    total = rss_mb(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += rss_mb(child)
    return total


class RssPeak(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            self.peak = max(self.peak, tree_rss_mb(self.pid))

    def stop(self) -> float:
        self.done.set()
        self.join(5)
        return self.peak


def timed_with_rss(worker: StreamAppProcess, rows: int, drop: Callable[[], object]) -> dict[str, float]:
    """``drop()`` the input, then rows/s to the last record applied and the RSS peak."""
    assert worker.proc is not None
    before = tree_rss_mb(worker.proc.pid)
    sampler = RssPeak(worker.proc.pid)
    sampler.start()
    drop()
    per_s = timed_apply(worker, rows, 3600)[1]
    return {"rows_per_s": per_s, "rss_before_mb": before, "rss_peak_mb": sampler.stop()}


def envelope_variant(broker: EmbeddedBroker, root: Path, rows: int) -> dict[str, float]:
    cluster = Cluster(broker.bootstrap, root, f"benv-{uuid.uuid4().hex[:6]}")
    worker = cluster.worker(root / cluster.app_id)
    try:
        worker.wait_ready(180)
        return timed_with_rss(
            worker, rows, lambda: asyncio.run(preload(broker.bootstrap, cluster.topic, envelopes(rows)))
        )
    finally:
        worker.stop(60)


def csv_variant(broker: EmbeddedBroker, root: Path, rows: int, s3_url: str, csv: Path) -> dict[str, float]:
    s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=KEY_ID,
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    channels = root / f"{bucket}.json"
    channels.write_text(json.dumps({"channels": [{
        "name": "CSV", "kind": "s3", "bucket": bucket, "prefix": "in/", "archivePrefix": "done/",
        "pollIntervalSeconds": 0.5, "envelopeRecords": ENVELOPE,
        "mapping": {"fields": {"sku": "SKU", "location": "Store", "onHand": "Qty", "reserved": "Held"}},
    }]}))
    cluster = Cluster(broker.bootstrap, root, f"bcsv-{uuid.uuid4().hex[:6]}")
    worker = cluster.worker(
        root / cluster.app_id, STREAM_APP_CHANNELS_FILE=str(channels),
        STREAM_APP_S3_ENDPOINT_URL=s3_url, STREAM_APP_AWS_ACCESS_KEY_ID=KEY_ID,
        STREAM_APP_AWS_SECRET_ACCESS_KEY=SECRET,
    )
    try:
        worker.wait_ready(180)
        run = timed_with_rss(worker, rows, lambda: s3.upload_file(str(csv), bucket, "in/stock.csv"))
        wait_for(lambda: any(o["Key"] == "done/stock.csv.rejections.json"
                             for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])),
                 120, 0.5, "report written")
        return run
    finally:
        worker.stop(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3_url = f"http://{host}:{port}"
    broker = EmbeddedBroker(port=free_port()).start()
    root = Path(tempfile.mkdtemp(prefix="bench-channels-"))
    results: dict[str, Any] = {"partitions": PARTITIONS, "sizes": {}}
    try:
        for rows in sizes:
            csv = root / f"stock-{rows}.csv"
            write_csv(csv, rows)
            env_runs: list[dict[str, float]] = []
            csv_runs: list[dict[str, float]] = []
            for rep in range(args.repeat):
                for variant in (("env", "csv") if rep % 2 == 0 else ("csv", "env")):
                    if variant == "env":
                        env_runs.append(envelope_variant(broker, root, rows))
                        run = env_runs[-1]
                        print(f"  [{rows:,}] envelopes: {run['rows_per_s']:,.0f} records/s, RSS "
                              f"{run['rss_before_mb']:.0f} -> peak {run['rss_peak_mb']:.0f} MB", flush=True)
                    else:
                        csv_runs.append(csv_variant(broker, root, rows, s3_url, csv))
                        run = csv_runs[-1]
                        print(f"  [{rows:,}] CSV from S3: {run['rows_per_s']:,.0f} rows/s, RSS "
                              f"{run['rss_before_mb']:.0f} -> peak {run['rss_peak_mb']:.0f} MB", flush=True)
            env_med = statistics.median(r["rows_per_s"] for r in env_runs)
            csv_med = statistics.median(r["rows_per_s"] for r in csv_runs)
            results["sizes"][rows] = {
                "csv_bytes": csv.stat().st_size,
                "envelope_records_per_s": [r["rows_per_s"] for r in env_runs],
                "csv_rows_per_s": [r["rows_per_s"] for r in csv_runs],
                "ratio_median": csv_med / env_med,
                "rss_growth_mb_envelopes": [r["rss_peak_mb"] - r["rss_before_mb"] for r in env_runs],
                "rss_growth_mb_csv": [r["rss_peak_mb"] - r["rss_before_mb"] for r in csv_runs],
            }
            print(f"  [{rows:,}] ratio CSV / envelopes: {csv_med / env_med:.2f} (target >= 0.8)", flush=True)
            csv.unlink()
    finally:
        broker.stop()
        moto.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
