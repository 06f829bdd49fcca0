"""Ingest benchmark (issue 2): one run on the embedded broker, three figures and their ratios.

(a) a bare Faust agent that only decodes each event (the per-event ceiling of Faust);
(b) the inventory pipeline with one record per event;
(c) the inventory pipeline with batch envelopes over >= 10,000 distinct keys.

Each figure runs in its own worker process (same machine, same broker) against a topic
preloaded before the worker starts; the clock runs from the first item processed to the
last, so group-join time is not counted.
Usage: python bench/ingest.py [--events N] [--records N] [--keys N] [--envelope N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Meter, preload, python_path  # noqa: E402
from stream_app.bootstrap import ensure_topics  # noqa: E402
from stream_app.embedded import EmbeddedBroker, free_port  # noqa: E402

PARTITIONS = 8


def stock_event(i: int, key: int, channel: str = "WMS") -> dict:
    return {
        "eventId": f"e{i}", "channel": channel, "sku": f"SKU-{key}", "location": "DC-1",
        "onHand": 100 + i % 50, "reserved": i % 7, "updatedAt": 1_795_000_000_000 + i,
    }


def run_worker(mode: str, bootstrap: str, topic: str, target: int, result: str) -> None:
    """Child process: one worker, stops itself after ``target`` items."""
    import faust
    import orjson

    from stream_app.cli import worker_loop
    from stream_app.settings import load_settings

    data_dir = tempfile.mkdtemp(prefix="bench-")
    app_id = f"bench-{mode}-{uuid.uuid4().hex[:6]}"

    def done(figures: dict[str, float]) -> None:
        Path(result).write_text(json.dumps(figures))

    meter = Meter(target, done)
    # every mode on the product's loop (STREAM_APP_EVENT_LOOP): a ratio compares the work
    loop = worker_loop(load_settings(_env_file=None))

    def plain_app(store: str) -> tuple[faust.App, faust.TopicT]:
        """A bare Faust app on the bench topic (the baselines)."""
        made = faust.App(
            app_id, broker=f"kafka://{bootstrap}", store=store, web_enabled=False,
            topic_partitions=PARTITIONS, consumer_auto_offset_reset="earliest",
            broker_rebalance_timeout=3, broker_heartbeat_interval=1, datadir=data_dir,
        )
        return made, made.topic(topic, value_type=bytes, value_serializer="raw", partitions=PARTITIONS)

    if mode == "table":
        # the plain Faust way: a per-key RocksDB table, read-modify-write per event
        from stream_app.domain.inventory import apply_change, empty_state
        from stream_app.records import parse_message

        app, source = plain_app("rocksdb://")
        table = app.Table("state", default=None, partitions=PARTITIONS)

        @app.agent(source)
        async def apply(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                for rec in parse_message(value, 1_000_000)[0]:
                    state = table.get(rec.key) or empty_state()
                    apply_change(state, rec)
                    table[rec.key] = state
                meter.add(1)
    elif mode == "bare":
        app, source = plain_app("memory://")

        @app.agent(source)
        async def decode(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                orjson.loads(value)
                meter.add(1)
    else:
        from stream_app.cli import bootstrap_topics
        from stream_app.wiring import create_runtime

        settings = load_settings(
            kafka_broker=bootstrap, app_id=app_id, partitions=PARTITIONS, data_dir=Path(data_dir),
            web_port=free_port(), topic_inventory_changes=topic, correct_end_offsets=True,
            _env_file=None,
        )
        bootstrap_topics(settings, loop)
        runtime = create_runtime(settings)

        registry = runtime.metrics.registry
        counted = [0]

        async def count(event: faust.EventT, keys: list[str], changed: list[str]) -> None:
            # records applied so far (this process)
            total = int(registry.get_sample_value("stream_app_inventory_records_applied_total") or 0)
            meter.add(total - counted[0])
            counted[0] = total

        runtime.inventory_hooks.after_apply.append(count)
        app = runtime.app
    worker = faust.Worker(app, loop=loop, loglevel="warning", quiet=True)
    from stream_app.cli import pin_library_log_levels

    worker.spinner = None
    pin_library_log_levels("warning")
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass


def measure(mode: str, bootstrap: str, values: list, target: int) -> dict:
    topic = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(bootstrap, [topic], PARTITIONS))
    produce_s = asyncio.run(preload(bootstrap, topic, values))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = fh.name
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, bootstrap, topic, str(target), result],
        cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": python_path()},
    )
    text = Path(result).read_text()
    if not text:
        raise SystemExit(f"{mode}: worker exited ({proc.returncode}) before finishing")
    figures = json.loads(text)
    figures["preload_seconds"] = produce_s
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, bootstrap, topic, target, result = sys.argv
        run_worker(mode, bootstrap, topic, int(target), result)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000, help="events for (a) and (b)")
    parser.add_argument("--records", type=int, default=200_000, help="records for (c)")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys for (c)")
    parser.add_argument("--envelope", type=int, default=500, help="records per envelope")
    args = parser.parse_args()

    broker = EmbeddedBroker(port=free_port()).start()
    try:
        per_record = [stock_event(i, i % 1000) for i in range(args.events)]
        bare = measure("bare", broker.bootstrap, [json.dumps(v).encode() for v in per_record], args.events)
        records = measure("records", broker.bootstrap, per_record, args.events)
        envelopes = [
            {"records": [stock_event(i, i % args.keys) for i in range(start, min(start + args.envelope, args.records))]}
            for start in range(0, args.records, args.envelope)
        ]
        batched = measure("envelopes", broker.bootstrap, envelopes, args.records)
    finally:
        broker.stop()

    ratio_b = records["per_second"] / bare["per_second"]
    print(f"(a) bare Faust agent, decode only : {bare['per_second']:>10,.0f} events/s  ({args.events:,} events)")
    print(f"(b) pipeline, one record per event: {records['per_second']:>10,.0f} events/s  ratio b/a = {ratio_b:.2f} (target >= 0.70)")
    print(f"(c) pipeline, batch envelopes     : {batched['per_second']:>10,.0f} records/s ({args.records:,} records, {args.keys:,} keys, {args.envelope}/envelope)"
          f"  ratio c/a = {batched['per_second'] / bare['per_second']:.1f}  (target >= 20,000 records/s)")
    print(json.dumps({"bare": bare, "records": records, "envelopes": batched}))


if __name__ == "__main__":
    main()
