"""agents.sync's dirty markers on the per-key tables (real RocksDB, a fake broker).

What a flush considers is the marked keys and the keys with books, never the whole
catalogue; an acknowledgement unmarks only what is clean at that moment; the gauge is
the marker count the table keeps, equal to a recount after any sequence.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.sync import DIRTY, SyncService, record_acknowledgement
from stream_app.domain.inventory import BufferPolicy
from stream_app.settings import Settings
from tables.keyed import KeyedTable
from tests.unit.test_keyed_table import PARTITIONS, Broker, CountingReads, Databases


def stock(on_hand: int) -> dict[str, Any]:
    return {"channels": {"WMS": {"onHand": on_hand, "reserved": 0, "v": [1, "e"]}}, "expected": {}}


class World:
    def __init__(self, root: Path, flush_max: int = 50_000, slice_ms: float = 1.5) -> None:
        self.broker = Broker()
        self.inventory = KeyedTable("inventory", "i", PARTITIONS, Databases(root / "i"), self.broker.deliver)
        self.accepted = KeyedTable("accepted", "a", PARTITIONS, Databases(root / "a"), self.broker.deliver)
        self.held: dict[str, int] = {}
        runtime: Any = SimpleNamespace(
            settings=Settings(data_dir=root, flush_max_records=flush_max, loop_slice_ms=slice_ms),
            inventory=self.inventory,
            buffers=BufferPolicy(),
            preorders=SimpleNamespace(store=SimpleNamespace(
                held_units=lambda key, partition=None: self.held.get(key, 0),
                book_keys=lambda p: [k for k in self.held if self.inventory.partition_of(k) == p],
            )),
            app=SimpleNamespace(rebalancing_count=1, tables=SimpleNamespace(recovery=None)),
        )
        self.service = SyncService(runtime, self.accepted)
        self.service.owned_partitions = lambda: list(range(PARTITIONS))  # type: ignore[method-assign]

    def set_stock(self, key: str, on_hand: int) -> None:
        self.inventory.put(key, stock(on_hand))
        asyncio.run(self.inventory.flush())
        self.service.refresh([key], {}, self.inventory.partition_of(key))
        asyncio.run(self.accepted.flush())

    def ack(self, accepted: dict[str, int], clean: list[str] = (), at: int = 1) -> None:  # type: ignore[assignment]
        msg = {"at": at, "batchId": f"b{at}", "accepted": [[k, q] for k, q in accepted.items()],
               "failed": [], "clean": list(clean)}
        record_acknowledgement(self.accepted, msg, lambda n: 1, self.service.still_dirty)
        asyncio.run(self.accepted.flush())

    def considered(self) -> list[str]:
        return [key for key, _, _ in self.service.candidates(list(range(PARTITIONS)))]

    def marked(self) -> set[str]:
        return {k for p in range(PARTITIONS) for k in self.accepted.side_keys(p, DIRTY)}


def test_a_flush_considers_marked_and_held_keys_only(tmp_path: Path) -> None:
    world = World(tmp_path)
    for n in range(50):
        world.set_stock(f"K{n}|L", 5)
    world.ack({f"K{n}|L": 5 for n in range(50)})
    assert world.marked() == set() and world.considered() == []
    world.set_stock("K3|L", 7)  # an inventory change
    world.held["K9|L"] = 2  # held units change sellable without an inventory change
    assert sorted(world.considered()) == ["K3|L", "K9|L"]
    assert world.marked() == {"K3|L"}


def test_an_ack_keeps_a_key_marked_when_it_changed_since_the_flush_read_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.set_stock("A|L", 5)
    world.set_stock("A|L", 8)  # changed after the flush read 5
    world.ack({"A|L": 5})
    assert world.marked() == {"A|L"}
    world.ack({"A|L": 8}, at=2)
    assert world.marked() == set()


def test_marked_keys_found_clean_are_unmarked_by_the_clean_list(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.set_stock("A|L", 5)
    world.ack({"A|L": 5})
    world.set_stock("A|L", 6)
    world.inventory.put("A|L", stock(5))  # and back before any flush
    asyncio.run(world.inventory.flush())
    assert world.marked() == {"A|L"}
    world.ack({}, clean=["A|L"], at=2)
    assert world.marked() == set()


def test_a_flush_takes_at_most_its_cap_and_the_next_resumes_after_it(tmp_path: Path) -> None:
    world = World(tmp_path, flush_max=7)
    for n in range(20):
        world.set_stock(f"K{n:02}|L", 1)
    seen: list[str] = []
    for _ in range(3):
        batch, more = asyncio.run(world.service.consider(list(range(PARTITIONS))))
        assert len(batch) == 7 and more
        seen += [key for key, _, _ in batch]
    assert len(set(seen)) == 20  # three capped flushes cover every marked key
    assert len(asyncio.run(world.service.consider(list(range(PARTITIONS)), full=True))[0]) == 20


def test_a_capped_flush_reads_about_its_cap_of_markers_not_all(tmp_path: Path) -> None:
    """Every key is marked after an initial load: a flush walks the markers from its
    cursor and stops at its cap (it listed every marker of the catalogue twice before)."""
    world = World(tmp_path, flush_max=10)
    for n in range(600):
        world.accepted.mark(DIRTY, f"K{n:04}|L", True)
        world.inventory.put(f"K{n:04}|L", stock(1))
    asyncio.run(world.inventory.flush())
    asyncio.run(world.accepted.flush())
    counting = world.accepted._db_for = CountingReads(world.accepted._db_for)  # type: ignore[method-assign]
    seen: list[str] = []
    for _ in range(3):
        batch, more = asyncio.run(world.service.consider(list(range(PARTITIONS))))
        assert len(batch) == 10 and more
        seen += [key for key, _, _ in batch]
    assert len(set(seen)) == 30
    assert counting.read <= 3 * (10 + 1 + PARTITIONS)  # the cap, the one that says "more", partition ends


def marked_world(root: Path, keys: int, flush_max: int, slice_ms: float = 1.5) -> World:
    """``keys`` keys K00000|L… with stock, each marked dirty, all durable."""
    world = World(root, flush_max=flush_max, slice_ms=slice_ms)
    for n in range(keys):
        world.accepted.mark(DIRTY, f"K{n:05}|L", True)
        world.inventory.put(f"K{n:05}|L", stock(1))
    asyncio.run(world.inventory.flush())
    asyncio.run(world.accepted.flush())
    return world


def test_a_long_consider_lets_the_loop_run_between_slices(tmp_path: Path) -> None:
    """A flush considers up to flush_max_records keys, a full resync every key: read in
    one step, that stopped the worker (1.5 s a flush at 1M keys). Another task must get
    the loop between slices (sized by time: a budget of a microsecond leaves one candidate
    a slice after the first 50), and the answer is the same as in one go."""
    slice_ = 50
    keys = 3 * slice_
    world = marked_world(tmp_path, keys, flush_max=2 * slice_ + 7, slice_ms=0.001)

    async def considered_while_ticking(full: bool) -> tuple[int, int, bool]:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        batch, more = await world.service.consider(list(range(PARTITIONS)), full=full)
        done.set()
        await ticker
        return len(batch), ticks, more

    taken, ticks, more = asyncio.run(considered_while_ticking(False))
    assert (taken, more) == (2 * slice_ + 7, True)
    assert ticks >= slice_ + 7  # the capped flush (108 read): 50, then one at a time
    taken, ticks, more = asyncio.run(considered_while_ticking(True))
    assert (taken, more) == (keys, False)
    assert ticks >= keys - slice_


def test_a_rebalance_during_a_walk_ends_it_and_the_next_flush_goes_on(tmp_path: Path) -> None:
    """Partitions may move while a flush reads its candidates slice by slice: the walk
    stops there (no iterator held across a rebalance) and says more are waiting; the
    next flush starts after the last key taken: the keys the cut walk did not reach first."""
    keys = 200
    world = marked_world(tmp_path, keys, flush_max=10_000, slice_ms=0.001)  # slices of 1
    app = world.service.runtime.app

    async def walk_with_a_rebalance() -> tuple[list[str], bool]:
        async def rebalance() -> None:
            await asyncio.sleep(0)
            app.rebalancing_count += 1

        moving = asyncio.create_task(rebalance())
        batch, more = await world.service.consider(list(range(PARTITIONS)))
        await moving
        return [key for key, _, _ in batch], more

    first, more = asyncio.run(walk_with_a_rebalance())
    assert more and 0 < len(first) < keys
    rest, more = asyncio.run(world.service.consider(list(range(PARTITIONS))))
    assert not more
    # (nothing acknowledged here, so the walk comes round to the first flush's keys too)
    after_cut = [key for key, _, _ in rest][: keys - len(first)]
    assert set(after_cut) == {f"K{n:05}|L" for n in range(keys)} - set(first)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3), st.booleans()), max_size=30))
def test_the_kept_marker_count_equals_a_recount(tmp_path_factory: Any, steps: list[Any]) -> None:
    world = World(tmp_path_factory.mktemp("count"))
    assert world.service.dirty_count() == 0  # counted once, then kept by the flushes
    for n, qty, ack in steps:
        key = f"K{n}|L"
        if ack:
            world.ack({key: qty}, at=len(world.broker.log[0]) + 1)
        else:
            world.set_stock(key, qty)
        assert world.service.dirty_count() == len(world.marked())
