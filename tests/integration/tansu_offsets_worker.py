"""A one-table Faust worker run as a subprocess by ``test_tansu_offsets.py``.

``write``: an agent copies JSON ``key -> int`` events from the source topic into a RocksDB
table (changelog on ``--changelog``); once it has handled ``--events`` events it flushes
the producer and writes ``--out``.

``recover``: the agent ignores its events; once table recovery is complete the worker
writes ``--out`` with the recovered table, Faust's recovery highwaters and the raw and
patched ``highwaters()`` of the changelog (and of ``--extra-topic`` if given).

Both modes then run until the test stops them (SIGTERM). ``--fix`` installs the end-offset
correction for the embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from faust.types import TP

from stream_app.broker.tansu_offsets import install_end_offset_correction

HighwatersFn = Callable[..., Awaitable[Mapping[TP, int]]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["write", "recover"])
    parser.add_argument("--broker", required=True, help="host:port")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--changelog", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--extra-topic", default="")
    parser.add_argument("--extra-partitions", type=int, default=1)
    parser.add_argument("--fix", action="store_true")
    return parser.parse_args()


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def tp_dict(offsets: Mapping[TP, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": int(v) for tp, v in offsets.items()}


def main() -> None:
    args = parse_args()
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.broker}",
        store="rocksdb://",
        datadir=args.datadir,
        autodiscover=False,
        web_enabled=False,
        topic_partitions=args.partitions,
        topic_allow_declare=True,
        key_serializer="json",
        value_serializer="json",
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=3,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        table_standby_replicas=0,
        # Let the changelog writes of a burst of events go out as multi-record batches.
        producer_linger=0.05,
        stream_wait_empty=False,
    )
    if args.fix:
        install_end_offset_correction(app, f"kafka://{args.broker}")
    source = app.topic(args.source, key_type=str, partitions=args.partitions)
    changelog = app.topic(
        args.changelog,
        key_type=str,
        partitions=args.partitions,
        internal=True,
    )
    table = app.Table(
        "totals",
        default=int,
        key_type=str,
        value_type=int,
        partitions=args.partitions,
        changelog_topic=changelog,
    )
    handled = 0
    all_handled = asyncio.Event()

    @app.agent(source)
    async def copy(stream: faust.StreamT[int]) -> None:
        nonlocal handled
        async for key, value in stream.items():
            if args.mode == "write":
                table[key] = value
                handled += 1
                if handled >= args.events:
                    all_handled.set()

    async def report_write() -> None:
        await all_handled.wait()
        await app.producer.flush()
        write_json(args.out, {"table": dict(table.items()), "handled": handled})

    async def report_recovery() -> None:
        recovery = cast(TableManager, app.tables).recovery
        await recovery.completed.wait()
        tps = {TP(args.changelog, p) for p in range(args.partitions)}
        if args.extra_topic:
            tps |= {TP(args.extra_topic, p) for p in range(args.extra_partitions)}
        consumer = app.consumer
        patched = await consumer.highwaters(*tps)
        # The driver's own method (unwrapped when the fix is installed).
        thread_highwaters = cast(HighwatersFn, consumer._thread.highwaters)  # type: ignore[attr-defined]
        raw_fn = cast(HighwatersFn, getattr(thread_highwaters, "__wrapped__", thread_highwaters))
        raw = await raw_fn(*tps)
        write_json(
            args.out,
            {
                "table": dict(table.items()),
                "recovery_highwaters": tp_dict(recovery.active_highwaters),
                "highwaters": tp_dict(patched),
                "raw_highwaters": tp_dict(raw),
            },
        )

    @app.task
    async def report() -> None:
        await (report_write() if args.mode == "write" else report_recovery())

    logging.getLogger("stream_app").setLevel(logging.INFO)
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
