"""tables.keyed: per-key entries on real RocksDB databases, a changelog that a fake broker
keeps (it may fail part-way through a flush, as a broker handing over does).

The oracle is a plain dict. Checked after every step of any sequence of updates, deletes,
flushes and failed flushes: reads equal the oracle; local state equals the replay of the
changelog up to the persisted offset (never ahead of it); a restarted layer on the same
databases, and one rebuilt from the changelog alone, read the same.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from tables.keyed import OFFSET_KEY, KeyedTable

PARTITIONS = 3


class Broker:
    """Changelog partitions; ``fail_after`` makes the next delivery fail after that many."""

    def __init__(self) -> None:
        self.log: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
        self.fail_after: int | None = None

    async def deliver(
        self, topic: str, by_partition: dict[int, list[tuple[bytes, bytes | None]]], source: str | None
    ) -> dict[int, int]:
        n = 0
        for partition, items in by_partition.items():
            for key, value in items:
                if self.fail_after is not None and n >= self.fail_after:
                    self.fail_after = None
                    raise ConnectionError("broker went away")
                self.log[partition].append((key, value))
                n += 1
        return {p: len(self.log[p]) - 1 for p, items in by_partition.items() if items}

    def replay(self, partition: int, upto: int | None = None) -> dict[bytes, bytes]:
        """What Faust's recovery rebuilds from the changelog (up to offset ``upto``)."""
        state: dict[bytes, bytes] = {}
        for key, value in self.log[partition][: None if upto is None else upto + 1]:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state


class Databases:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, Rdict] = {}

    def __call__(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.root / f"p{partition}"), options=Options(raw_mode=True))
        return self.dbs[partition]

    def contents(self, partition: int) -> tuple[dict[bytes, bytes], int | None]:
        data = dict(self(partition).items())
        offset = data.pop(OFFSET_KEY, None)
        return data, None if offset is None else int(offset)

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()


class CountingReads:
    """Partition databases whose iterators count the entries they yield (``read``)."""

    def __init__(self, databases: Any) -> None:
        self.databases, self.read = databases, 0

    def __call__(self, partition: int) -> Any:
        counter, db = self, self.databases(partition)

        class Counted:
            def get(self, key: Any) -> Any:
                return db.get(key)

            def items(self, **kwargs: Any) -> Any:
                for item in db.items(**kwargs):
                    counter.read += 1
                    yield item

        return Counted()


def layer(dbs: Databases, broker: Broker, slice_seconds: float | None = None) -> KeyedTable:
    return KeyedTable("t", "t-changelog", PARTITIONS, dbs, broker.deliver, slice_seconds)


#: a budget no slice fits: local state written one entry per step of the loop
ONE_ENTRY_A_SLICE = 1e-12


def run(coro: Any) -> Any:
    return asyncio.run(coro)


keys = st.sampled_from([f"SKU-{n}|LOC-{n % 3}" for n in range(12)])
values = st.one_of(st.none(), st.integers(0, 5).map(lambda n: {"n": n, "pad": "x" * n}))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, values),
        st.tuples(st.just("flush"), st.none(), st.none()),
        st.tuples(st.just("fail"), st.integers(0, 4), st.none()),
    ),
    max_size=40,
)


@pytest.mark.parametrize("slice_seconds", [None, ONE_ENTRY_A_SLICE], ids=["whole", "sliced"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_any_sequence_reads_back_as_a_dict_and_the_changelog_rebuilds_it(
    steps: list[Any], slice_seconds: float | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dbs, broker = Databases(Path(tmp)), Broker()
        table = layer(dbs, broker, slice_seconds)
        oracle: dict[str, Any] = {}
        durable: dict[str, Any] = {}  # what the last successful flush made durable
        for op, a, b in steps:
            if op == "put":
                table.put(a, b)
                oracle[a] = b
            elif op == "flush":
                run(table.flush())
                durable = dict(oracle)
            else:
                broker.fail_after = a
                try:
                    run(table.flush())
                except ConnectionError:
                    pass
                else:
                    durable = dict(oracle)
                broker.fail_after = None  # also when nothing was staged to send
            for key, value in oracle.items():
                assert table.get(key) == value
            by_partition: dict[int, list[str]] = {}
            for key in [*oracle, "never|written"]:
                by_partition.setdefault(table.partition_of(key), []).append(key)
            for partition, keys in by_partition.items():  # a multi-get reads the same
                assert table.get_many(partition, keys) == [oracle.get(k) for k in keys]
            for partition in range(PARTITIONS):
                local, offset = dbs.contents(partition)
                # local state is exactly the changelog up to its persisted offset
                assert local == (broker.replay(partition, offset) if offset is not None else {})
        run(table.flush())
        durable = dict(oracle)
        expected = {k: v for k, v in durable.items() if v is not None}
        dbs.close()
        restarted = layer(dbs, broker, slice_seconds)  # same databases: a restart keeping local state
        assert {k: restarted.get(k) for k in oracle} == durable
        listed = {k: v for p in range(PARTITIONS) for k, v in restarted.items(p)}
        assert listed == expected
        for partition in range(PARTITIONS):
            rebuilt = {k.decode(): orjson.loads(v) for k, v in broker.replay(partition).items()}
            assert rebuilt == {k: v for k, v in expected.items() if table.partition_of(k) == partition}
        dbs.close()


def test_one_key_writes_one_message_whatever_the_catalogue_size(tmp_path: Path) -> None:
    broker = Broker()
    dbs = Databases(tmp_path)
    table = layer(dbs, broker)
    state = {"channels": {"WMS": {"onHand": 5, "reserved": 0, "v": [1, "e"]}}}
    for n in range(20_000):
        table.put(f"SKU-{n}|LOC", state)
    run(table.flush())
    largest = max(len(v or b"") for part in broker.log.values() for _, v in part)
    assert largest == len(orjson.dumps(state))
    before = sum(len(part) for part in broker.log.values())
    table.update(["SKU-7|LOC"], lambda key, old: ({**(old or {}), "x": 1}, True))
    table.update(["SKU-7|LOC"], lambda key, old: ({**(old or {}), "x": 2}, True))
    assert run(table.flush()) == 1  # staged twice, written once
    assert sum(len(part) for part in broker.log.values()) == before + 1
    assert table.get("SKU-7|LOC") == {**state, "x": 2}
    dbs.close()


def test_a_failed_flush_keeps_its_writes_and_newer_ones_win(tmp_path: Path) -> None:
    broker = Broker()
    dbs = Databases(tmp_path)
    table = layer(dbs, broker)
    table.put("A|L", {"n": 1})
    table.put("B|L", {"n": 1})
    broker.fail_after = 1
    with pytest.raises(ConnectionError):
        run(table.flush())
    assert table.staged == 2 and table.get("A|L") == {"n": 1}
    table.put("A|L", {"n": 2})
    run(table.flush())
    assert table.staged == 0
    assert table.get("A|L") == {"n": 2} and table.get("B|L") == {"n": 1}
    dbs.close()


def test_markers_are_listed_per_partition_without_the_entries(tmp_path: Path) -> None:
    broker = Broker()
    dbs = Databases(tmp_path)
    table = layer(dbs, broker)
    for n in range(30):
        table.put(f"K{n}|L", {"n": n})
    assert table.mark(b"dirty", "K1|L", True) and not table.mark(b"dirty", "K1|L", True)
    table.mark(b"dirty", "K2|L", True)
    by_partition = {p: table.side_keys(p, b"dirty") for p in range(PARTITIONS)}
    assert sorted(k for ks in by_partition.values() for k in ks) == ["K1|L", "K2|L"]
    run(table.flush())
    assert table.mark(b"dirty", "K2|L", False)
    assert sorted(k for p in range(PARTITIONS) for k in table.side_keys(p, b"dirty")) == ["K1|L"]
    run(table.flush())
    assert sorted(k for p in range(PARTITIONS) for k in table.side_keys(p, b"dirty")) == ["K1|L"]
    assert table.is_marked(b"dirty", "K1|L") and not table.is_marked(b"dirty", "K2|L")
    table.mark(b"dirty", "K3|L", True)  # staged: a multi-get of the markers sees it too
    for key, expected in (("K1|L", True), ("K2|L", False), ("K3|L", True)):
        assert table.marks(b"dirty", table.partition_of(key), [key]) == [expected]
    assert len({k for p in range(PARTITIONS) for k, _ in table.items(p)}) == 30  # markers apart
    dbs.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.sampled_from(["mark", "flush", "fail"])),
             max_size=40),
    st.one_of(st.none(), st.integers(0, 41)),
)
def test_the_lazy_marker_walk_equals_an_oracle_from_any_cursor(
    tmp_path_factory: Any, steps: list[Any], after: int | None
) -> None:
    """iter_side_keys: the marked keys after the cursor, in key order, with staged and
    in-flight marks overlaid (a failed flush's marks stay staged), whatever was flushed."""
    broker = Broker()
    dbs = Databases(tmp_path_factory.mktemp("walk"))
    table = layer(dbs, broker)
    oracle: set[str] = set()
    for n, on, step in steps:
        key = f"K{n:02}|L"
        table.mark(b"dirty", key, on)
        (oracle.add if on else oracle.discard)(key)
        if step == "flush":
            run(table.flush())
        elif step == "fail" and table.staged:
            broker.fail_after = 0
            with pytest.raises(ConnectionError):
                run(table.flush())
    cursor = None if after is None else f"K{after:02}|L"
    for partition in range(PARTITIONS):
        mine = sorted(k for k in oracle if table.partition_of(k) == partition)
        expected = [k for k in mine if cursor is None or k > cursor]
        assert list(table.iter_side_keys(partition, b"dirty", cursor)) == expected
        assert table.side_keys(partition, b"dirty") == mine
    dbs.close()


def test_a_walk_stopped_after_n_markers_read_about_n(tmp_path: Path) -> None:
    """What a capped flush pays: the walk reads the markers it yields, not all of them."""
    broker = Broker()
    dbs = Databases(tmp_path)
    table = layer(dbs, broker)
    for n in range(3_000):
        table.mark(b"dirty", f"K{n:05}|L", True, 0)
    run(table.flush())
    counting = table._db_for = CountingReads(dbs)  # type: ignore[method-assign]
    walk = table.iter_side_keys(0, b"dirty", "K01000|L")
    assert [next(walk) for _ in range(10)] == [f"K{n:05}|L" for n in range(1001, 1011)]
    assert counting.read <= 12
    dbs.close()


def recovered(dbs: Databases, broker: Broker, partition: int) -> dict[bytes, bytes]:
    """What a worker killed now would hold after its restart: local state, then the
    changelog's tail from the persisted offset on (stream_app.local_state)."""
    local, offset = dbs.contents(partition)
    for key, value in broker.log[partition][0 if offset is None else offset + 1 :]:
        if value is None:
            local.pop(key, None)
        else:
            local[key] = value
    return local


def test_a_sliced_flush_lets_the_loop_run_and_a_kill_at_any_step_recovers(tmp_path: Path) -> None:
    """RocksDB holds the GIL while it writes (~3 µs an entry on a slow machine): a flush
    writes local state a slice at a time. At every step between two slices the table
    reads what was flushed (the batch until local state has it), and a worker killed
    there would recover the changelog's state (a partition's offset moves only with its
    last entry)."""
    broker, dbs = Broker(), Databases(tmp_path)
    table = layer(dbs, broker, ONE_ENTRY_A_SLICE)
    first = {f"K{n}|L": {"n": n} for n in range(40)}
    for key, value in first.items():
        table.put(key, value)
    run(table.flush())
    second = {key: ({"n": -n} if n % 3 else None) for n, key in enumerate(first)}
    for key, value in second.items():
        table.put(key, value)

    async def flush_while_watching() -> int:
        turns = 0
        flushing = asyncio.create_task(table.flush())
        await asyncio.sleep(0)  # the flush sent its batch and wrote its first slice
        while not flushing.done():
            turns += 1
            assert {key: table.get(key) for key in second} == second
            for partition in range(PARTITIONS):
                assert recovered(dbs, broker, partition) == broker.replay(partition)
            await asyncio.sleep(0)
        await flushing
        return turns

    assert run(flush_while_watching()) >= len(second) - 1  # one entry a step
    for partition in range(PARTITIONS):
        local, offset = dbs.contents(partition)
        assert offset == len(broker.log[partition]) - 1 and local == broker.replay(partition)
    dbs.close()


def test_a_flush_cancelled_between_slices_leaves_local_state_whole(tmp_path: Path) -> None:
    """The writes are on the changelog, and reads stop looking at the batch when the flush
    ends: a flush cancelled between two slices writes the rest before it ends."""
    broker, dbs = Broker(), Databases(tmp_path)
    table = layer(dbs, broker, ONE_ENTRY_A_SLICE)
    table.put("first|L", {"n": 0})
    run(table.flush())  # (the first slice of a table is 500 entries: its time sizes the next)
    values = {f"K{n}|L": {"n": n} for n in range(30)}
    for key, value in values.items():
        table.put(key, value)

    async def cancel_mid_way() -> None:
        flushing = asyncio.create_task(table.flush())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not flushing.done()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing

    run(cancel_mid_way())
    assert {key: table.get(key) for key in values} == values
    for partition in range(PARTITIONS):
        local, offset = dbs.contents(partition)
        assert offset == len(broker.log[partition]) - 1 and local == broker.replay(partition)
    dbs.close()


def test_a_marker_count_taken_between_two_slices_of_a_write_stays_true(tmp_path: Path) -> None:
    """Marker counts are kept by every flush (a /metrics scrape is O(1)); one counted for
    the first time while a flush writes local state a slice at a time must count the rest
    of that write too."""
    broker, dbs = Broker(), Databases(tmp_path)
    table = layer(dbs, broker, ONE_ENTRY_A_SLICE)
    keys = [f"K{n}|L" for n in range(30)]
    for key in keys[:20]:
        table.mark(b"dirty", key, True)
    run(table.flush())
    for key in keys[10:20]:  # ten cleared, ten new
        table.mark(b"dirty", key, False)
    for key in keys[20:]:
        table.mark(b"dirty", key, True)

    async def count_mid_way() -> list[int]:
        counted: list[int] = []
        flushing = asyncio.create_task(table.flush())
        await asyncio.sleep(0)
        while not flushing.done():
            table.forget_counts()  # (as after a recovery): counted again, now
            counted.append(sum(table.side_count(p, b"dirty") for p in range(PARTITIONS)))
            await asyncio.sleep(0)
        await flushing
        return counted

    counted = run(count_mid_way())
    assert len(counted) > 5  # counted between many slices
    kept = sum(table.side_count(p, b"dirty") for p in range(PARTITIONS))
    table.forget_counts()
    recount = sum(table.side_count(p, b"dirty") for p in range(PARTITIONS))
    expected = len(keys[:10] + keys[20:])
    assert kept == recount == expected
    assert set(counted) == {expected}
    dbs.close()
