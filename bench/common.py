"""Shared pieces of the benchmarks: an embedded broker, preloading topics, in-process workers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]


def python_path() -> str:
    """``PYTHONPATH`` for a process a bench starts: the project first, then what the bench
    itself was given (``bench/step_census`` then reaches the worker too)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(ROOT))


async def preload(
    bootstrap: str,
    topic: str,
    values: list[Any],
    key: Callable[[Any], bytes | None] | None = None,
) -> float:
    """Produce values as fast as possible (``key(value)`` as message key, else none);
    returns seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=1_000_000,
        max_request_size=8_000_000,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        batch = []
        for value in values:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            batch.append(await producer.send(topic, raw, key=key(value) if key else None))
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch.clear()
        await producer.flush()
        await asyncio.gather(*batch)
    finally:
        await producer.stop()
    return time.perf_counter() - started


class Meter:
    """Counts items; when ``target`` is reached, records the time and stops the worker."""

    def __init__(self, target: int, on_done: Callable[[dict[str, float]], None]) -> None:
        self.target = target
        self.count = 0
        self.first: float | None = None
        self.on_done = on_done

    def add(self, n: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.count += n
        if self.count >= self.target:
            elapsed = now - self.first
            self.on_done({"items": self.count, "seconds": elapsed, "per_second": self.count / elapsed})
            self.count = -(10**12)  # report once
            os.kill(os.getpid(), signal.SIGTERM)
