"""Web requests waiting for an order's result on ``pre-order-results`` (a registry, not state).

``POST /pre-orders`` waits up to ``pre_order_wait_seconds`` for its order's result. The
worker that decides a single-item order hands the result over in-process
(:meth:`ResultWaiters.resolve_result`, the books' ``on_result``); other results (multi-item
orders, a decision made by another worker during a rebalance) come from a consumer of
``pre-order-results`` (no group, every partition, from the end) that runs only while
requests wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError

from stream_app.broker.consumers import assign_from_end, stop_consumer

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: how much one decision's lag moves the smoothed lag (about the last ten decisions count)
LAG_WEIGHT = 0.1
#: a lag older than this says nothing (the intake has caught up, or stopped: the waiting
#: requests tell that). Above capacity an intake's groups come more than 0.5 s apart here:
#: with 0.5 the signal dropped out between them and POST p99 at 500/s went from 2.0–3.2 s
#: to 4.4–4.9 s (the deadline); the price of 1 s is up to a second of 202s after a replay
#: or a burst has been caught up
LAG_FRESH_SECONDS = 1.0


class ResultWaiters:
    """Web requests waiting for the ``pre-order-results`` value of an order."""

    def __init__(
        self,
        idle_seconds: float = 30.0,
        lag_fresh_seconds: float = LAG_FRESH_SECONDS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        #: monotonic seconds (the running loop's time unless given)
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self._waiting: dict[str, list[asyncio.Future[Json]]] = {}
        #: when each request began waiting for its decision (its order on the broker),
        #: oldest first
        self._since: dict[asyncio.Future[Json], float] = {}
        #: decisions' lag (a pre-order's arrival to its decision), smoothed over the last
        #: ~1/LAG_WEIGHT decisions (one slow decision is not a queue), and when the last
        #: was seen; older than ``lag_fresh_seconds`` it says nothing
        self._lag = (0.0, float("-inf"))
        self.lag_fresh_seconds = lag_fresh_seconds
        self.ready = asyncio.Event()
        self.idle_seconds = idle_seconds
        self._wanted = asyncio.Event()
        self._last_wanted = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._closed = False

    def expect(self, order_id: str) -> asyncio.Future[Json]:
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, []).append(future)
        return future

    def waiting(self, future: asyncio.Future[Json]) -> None:
        """The request of ``future`` begins waiting for a decision this worker's intake
        makes (until :meth:`forget`): how long the oldest has waited tells an intake that
        stopped deciding."""
        self._since[future] = self.clock()

    def note_lag(self, seconds: float) -> None:
        """A pre-order was decided ``seconds`` after it arrived (the books, each decision)."""
        now = self.clock()
        smoothed, seen = self._lag
        if now - seen > self.lag_fresh_seconds:
            smoothed = 0.0  # a new stretch of decisions: what came before says nothing
        self._lag = (smoothed + LAG_WEIGHT * (seconds - smoothed), now)

    def behind(self) -> float:
        """How far decisions run behind their pre-orders now, as far as this worker sees:
        their smoothed lag while fresh, or how long the oldest request has waited for its
        decision (an intake that stopped deciding makes no fresh lag)."""
        now = self.clock()
        lag, seen = self._lag
        fresh = lag if now - seen <= self.lag_fresh_seconds else 0.0
        oldest = now - next(iter(self._since.values()), now)
        return max(fresh, oldest)

    def follow(self) -> None:
        """Make sure the results consumer runs (it stops after ``idle_seconds`` without
        anyone waiting: fetching costs CPU even when nothing comes)."""
        self._last_wanted = asyncio.get_running_loop().time()
        self._wanted.set()

    def resolve_result(self, order_id: str, result: Json) -> None:
        """An order result published by this worker (in-process, no topic round trip)."""
        futures = self._waiting.pop(order_id, None)
        for future in futures or ():
            if not future.done():
                future.set_result(result)

    def forget(self, order_id: str, future: asyncio.Future[Json]) -> None:
        self._since.pop(future, None)
        futures = self._waiting.get(order_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._waiting[order_id]

    def resolve(self, key: bytes | None, value: bytes | None) -> None:
        """A ``pre-order-results`` record (most have nobody waiting: decode only then)."""
        if key is None or not self._waiting:
            return
        order_id = key.decode(errors="replace")
        if order_id not in self._waiting:
            return
        try:
            result = orjson.loads(value or b"null")
        except orjson.JSONDecodeError:
            return
        self.resolve_result(order_id, result)

    async def serve(self, bootstrap: str, topic: str) -> None:
        """Run :meth:`run` whenever :meth:`follow` asks for it, until cancelled or closed."""
        while not self._closed:
            await self._wanted.wait()
            try:
                await self.run(bootstrap, topic)
            except asyncio.CancelledError:
                raise
            except ConsumerStoppedError:
                return  # closed: the worker is stopping
            except Exception:
                log.exception("the pre-order results follower failed (restarting)")
                await asyncio.sleep(1)

    def _idle(self) -> bool:
        loop = asyncio.get_running_loop()
        return not self._waiting and loop.time() - self._last_wanted > self.idle_seconds

    async def run(self, bootstrap: str, topic: str) -> None:
        """Follow every partition of ``topic`` from its end until idle."""
        if self._closed:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=5,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            await assign_from_end(consumer, topic)
            self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        self.resolve(record.key, record.value)
                if self._idle():
                    # no await between this check and the clear: a request that asks
                    # for the follower from now on finds it stopped and starts it again
                    self._wanted.clear()
                    break
        finally:
            self.ready.clear()
            self._consumer = None
            await stop_consumer(consumer)

    async def close(self) -> None:
        """Stop the consumer if it runs (the worker is stopping: its task is cancelled
        next, and a consumer left open is reported as unclosed)."""
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
