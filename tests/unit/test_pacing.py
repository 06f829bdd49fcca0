"""Slices sized by time (stream_app.pacing): the sizes follow what items cost, every item
is handed out once and in order, and the loop is let go between two slices."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.pacing import Foreground, Slicer, breathe


class Clock:
    """Time that moves only when the work being timed says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_slice_has_the_first_size_then_the_budget_over_an_items_cost() -> None:
    slicer = Slicer(0.002, first=50, clock=Clock())
    assert slicer.size == 50
    slicer.took(50, 0.010)  # 0.2 ms an item: 10 fit in 2 ms
    assert slicer.size == 10
    slicer.took(10, 0.0002)  # now 20 µs an item: the estimate moves, not jumps
    assert 10 < slicer.size < 100


def test_sizes_stay_within_their_bounds() -> None:
    slicer = Slicer(0.001, first=5000, least=2, most=300)
    assert slicer.size == 300
    slicer.took(10, 1.0)  # far slower than the budget
    assert slicer.size == 2
    slicer = Slicer(0.001, least=2, most=300)
    slicer.took(10, 0.0)  # free items: as many as allowed
    assert slicer.size == 300
    slicer.took(0, 5.0)  # nothing handled tells nothing
    assert slicer.size == 300


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Slicer(0)


def test_a_slow_machine_gets_smaller_slices_than_a_fast_one() -> None:
    """What the setting is for: a step is about as long on any machine."""
    sizes = {}
    for per_item in (0.00003, 0.00009):  # 12-04's apply, ~3 x slower (docs/benchmarks.md)
        clock = Clock()
        slicer = Slicer(0.0015, first=50, clock=clock)

        async def run(cost: float = per_item, clock: Clock = clock, slicer: Slicer = slicer) -> None:
            async for part in slicer.paced(list(range(5000))):
                clock.now += cost * len(part)

        asyncio.run(run())
        sizes[per_item] = slicer.size
    assert sizes[0.00003] == 50 and sizes[0.00009] == 16


@given(st.lists(st.integers(), max_size=400), st.lists(st.floats(0, 0.01), min_size=1, max_size=50))
def test_paced_hands_out_every_item_once_in_order(items: list[int], costs: list[float]) -> None:
    clock = Clock()
    slicer = Slicer(0.001, first=7, clock=clock)
    seen: list[int] = []

    async def run() -> None:
        n = 0
        async for part in slicer.paced(items):
            assert 1 <= len(part) <= slicer.most
            seen.extend(part)
            clock.now += costs[n % len(costs)] * len(part)
            n += 1

    asyncio.run(run())
    assert seen == items


def test_other_tasks_run_between_two_slices_and_not_within_one() -> None:
    clock = Clock()
    slicer = Slicer(0.001, first=10, clock=clock)
    ticks: list[int] = []
    seen = 0

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            ticks.append(seen)
            await asyncio.sleep(0)

    async def run() -> None:
        nonlocal seen
        done = asyncio.Event()
        task = asyncio.create_task(ticker(done))
        await asyncio.sleep(0)
        async for part in slicer.paced(list(range(100))):
            seen += len(part)
            clock.now += 0.0001 * len(part)  # 10 items fit the budget
        done.set()
        await task

    asyncio.run(run())
    # the ticker saw the work only at slice boundaries: after 10, 20, ... 90 items
    assert sorted(set(ticks) - {0}) == list(range(10, 100, 10))


def test_take_reads_a_slice_of_an_iterator_and_times_its_reading() -> None:
    clock = Clock()
    slicer = Slicer(0.001, first=4, clock=clock)

    def walk() -> object:
        for n in range(10):
            clock.now += 0.0005  # reading an item is the work
            yield n

    items = iter(walk())  # type: ignore[call-overload]
    assert slicer.take(items) == [0, 1, 2, 3]
    assert slicer.size == 2  # 0.5 ms an item: two fit in 1 ms
    assert slicer.take(items) == [4, 5]
    assert slicer.take(iter([])) == []


async def long_work(foreground: Foreground, slices: int, order: list[str]) -> None:
    """Slices of work, each noted in ``order``, with a :func:`breathe` after each."""
    for n in range(slices):
        order.append(f"slice {n}")
        await breathe(foreground)


def test_long_work_gives_way_while_a_request_waits_for_its_handler() -> None:
    foreground = Foreground(most=5.0)
    order: list[str] = []

    async def run() -> None:
        foreground.arrived(2)
        work = asyncio.create_task(long_work(foreground, 3, order))
        for _ in range(5):  # however many turns pass, it waits
            await asyncio.sleep(0)
        order.append("handler 1")
        foreground.started()
        await asyncio.sleep(0)
        order.append("handler 2")
        foreground.started()
        await work

    asyncio.run(run())
    assert order == ["slice 0", "handler 1", "handler 2", "slice 1", "slice 2"]
    assert foreground.waiting == 0


def test_requests_arriving_while_long_work_waits_do_not_prolong_its_wait() -> None:
    """A flood of requests cannot stop the stream: long work waits for the requests that
    had arrived when it came to give way, not for every one after."""
    foreground = Foreground(most=5.0)
    order: list[str] = []

    async def run() -> None:
        foreground.arrived(1)
        work = asyncio.create_task(long_work(foreground, 2, order))
        await asyncio.sleep(0)  # slice 0, then it yields
        await asyncio.sleep(0)  # it gives way to the first request
        foreground.arrived(1)  # a second request, while it waits
        order.append("handler 1")
        foreground.started()
        for _ in range(3):
            await asyncio.sleep(0)
        order.append("handler 2")
        foreground.started()
        await work

    asyncio.run(run())
    assert order == ["slice 0", "handler 1", "slice 1", "handler 2"]


def test_a_request_that_never_starts_holds_long_work_at_most_the_limit() -> None:
    foreground = Foreground(most=0.05)

    async def run() -> float:
        foreground.arrived(1)  # e.g. its connection closed before the handler ran
        began = time.perf_counter()
        await breathe(foreground)
        waited = time.perf_counter() - began
        await breathe(foreground)  # the count was dropped: no second wait
        return waited

    waited = asyncio.run(run())
    assert 0.04 <= waited < 1.0
    assert foreground.waiting == 0


def test_off_nothing_is_counted_and_nothing_waits() -> None:
    foreground = Foreground(most=0)
    foreground.arrived(3)
    assert foreground.waiting == 0
    foreground.started()  # (a start without an arrival counts nothing either)
    assert foreground.waiting == 0

