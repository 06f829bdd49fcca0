"""Slices of long work sized by time, not by count.

A web request on the worker's event loop waits for one step of every busy task, so how
long a step holds the loop is what sets ``GET /inventory``'s p99 under a saturating
stream. A fixed count of records per step (50) held the loop ~1.5 ms on one machine and
~4.6 ms on one three times slower; a :class:`Slicer` learns how long one item takes and
sizes the next slice to the budget, so a step is about as long on any machine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: how much the newest slice moves the estimate of one item's time (the rest: history)
WEIGHT = 0.3


class Slicer:
    """Hands out slices of a sequence, each sized so that handling it takes about
    ``budget`` seconds, from the time the slices before it took (:meth:`took`).

    Sizes stay within ``least``..``most`` items; the first slice has ``first`` items."""

    __slots__ = ("budget", "least", "most", "clock", "_per_item", "size")

    def __init__(
        self,
        budget: float,
        *,
        first: int = 50,
        least: int = 1,
        most: int = 1000,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.budget = budget
        self.clock = clock
        self.least = least
        self.most = most
        self._per_item: float | None = None
        self.size = max(least, min(most, first))

    def took(self, items: int, seconds: float) -> None:
        """``items`` were handled in ``seconds``: the next slice is sized by it."""
        if items <= 0:
            return
        per_item = max(seconds, 0.0) / items
        if self._per_item is None:
            self._per_item = per_item
        else:
            self._per_item += WEIGHT * (per_item - self._per_item)
        # (the epsilon: 1 ms over 0.1 ms an item is 10 items, not 9.999…)
        fits = self.budget / self._per_item * (1 + 1e-9) if self._per_item > 0 else self.most
        self.size = max(self.least, int(min(self.most, fits)))

    async def paced(self, items: list[T]) -> AsyncIterator[list[T]]:
        """``items`` in consecutive slices of the current size, one turn of the loop let
        go between two (every other ready task runs once); each slice is timed from when
        it is handed out until the next is asked for: the caller handles it in between,
        without awaiting anything that suspends."""
        start = 0
        while start < len(items):
            if start:
                await breathe()
            part = items[start : start + self.size]
            began = self.clock()
            yield part
            self.took(len(part), self.clock() - began)
            start += len(part)

    def take(self, items: Iterator[T]) -> list[T]:
        """The next slice of an iterator whose items are read as it is walked (its time is
        what is measured): up to the current size, fewer when it runs out."""
        began = self.clock()
        part = list(itertools.islice(items, self.size))
        self.took(len(part), self.clock() - began)
        return part


class Foreground:
    """Web requests that arrived and whose handler has not started yet.

    A request needs three turns of the loop after its bytes arrive (aiohttp parses them,
    wakes the connection's task, which starts the handler's task), and in each turn every
    busy task runs one step first. Long work that yields with :func:`breathe` then waits
    until the requests that had arrived when it came to give way have started (requests
    arriving meanwhile do not prolong it: a flood of requests cannot stop the stream), at
    most ``most`` seconds (a request whose handler never runs is then counted as started).
    A request so waits for the steps under way when it arrived, not for three rounds of
    them. Counted by hooks in the web server (stream_app.web.priority)."""

    __slots__ = ("most", "arrivals", "starts", "gave_way", "seconds_given", "_waiters")

    def __init__(self, most: float = 0.0) -> None:
        self.most = most  # 0: off
        self.arrivals = 0
        self.starts = 0
        #: how often long work gave way, and for how long in all (stream_app.metrics)
        self.gave_way = 0
        self.seconds_given = 0.0
        #: (arrivals to wait for, future) in the order given (targets never decrease)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return self.arrivals - self.starts

    def arrived(self, requests: int) -> None:
        if self.most > 0:
            self.arrivals += requests

    def started(self) -> None:
        if self.starts < self.arrivals:  # (none counted: turned on while it was running)
            self.starts += 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.starts:
            _, future = self._waiters.popleft()
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(None)

    def _expire(self, target: int) -> None:
        self.starts = max(self.starts, target)  # they never started: stop waiting for them
        self._wake()

    async def give_way(self) -> None:
        """Wait until the requests that arrived so far have started (or ``most`` seconds)."""
        target = self.arrivals
        if self.starts >= target:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, future))
        expiry = loop.call_later(self.most, self._expire, target)
        began = loop.time()
        try:
            await future
        finally:
            expiry.cancel()
            self.gave_way += 1
            self.seconds_given += loop.time() - began


#: the process's web requests (one web server per worker process)
FOREGROUND = Foreground()


async def breathe(foreground: Foreground = FOREGROUND) -> None:
    """Let every other ready task and callback run once (one turn of the loop), and give
    way to web requests waiting for their handler (:class:`Foreground`)."""
    await asyncio.sleep(0)
    if foreground.waiting:
        await foreground.give_way()
