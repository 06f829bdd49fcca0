"""One table entry per key, written in groups: the storage layer of per-key tables.

Why not Faust's own ``table[key] = value``: every such write queues one changelog message
through Faust's per-message producer path, which bounds a worker to a few thousand writes
per second (FAUST-NOTES). Why not buckets of keys (this project's layout 1): a change to
one key rewrote its whole bucket, so bytes per change grew with the catalogue (3.7 MB
per bucket at 1M keys, past Kafka's message limit). Here:

* a change to a key writes that key only: one changelog message keyed by the key, whose
  size depends on that key's state alone (a compacted changelog keeps one per key);
* writes are STAGED by :meth:`KeyedTable.update` / :meth:`put` (a key staged twice is
  written once) and sent by :meth:`flush` straight through aiokafka's producer, which
  batches them: tens of thousands of messages per second;
* :meth:`flush` writes the CHANGELOG FIRST and only then local RocksDB (values and the
  partition's persisted changelog offset in one atomic write batch). Local state is
  therefore never ahead of the changelog: after a kill -9 anywhere, recovery from the
  persisted offset (the tail only) gives exactly what the changelog holds, and a replayed
  input needs to rewrite nothing (unlike Faust-written tables, stream_app.local_state);
* reads see staged and in-flight writes first (read your writes), then decode ONE key
  from the partition's RocksDB.

The Faust table behind it still owns the changelog topic, recovery, standby replicas and
the partition databases: a changelog message here is exactly what Faust's recovery
applies (raw key bytes → raw value bytes, ``None`` deletes).

Writes happen in the worker that owns the key's partition (agents of that partition).
Flushes of one table are serialised, so a key's changelog messages are in write order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import faust
import orjson

from stream_app.broker.stores import OFFSET_KEY, partition_db
from stream_app.pacing import Slicer, breathe
from stream_app.partitioning import partition_for

Json = dict[str, Any]

#: the first byte of keys a table keeps beside its entries (markers, :meth:`mark`)
SIDE = b"\x00"

#: ``deliver(topic, partition → [(key, value)], source)``: every message on the broker, in
#: order per partition; returns partition → offset of its last message
Deliver = Callable[[str, dict[int, list[tuple[bytes, bytes | None]]], str | None], Awaitable[dict[int, int]]]


class PartitionDB(Protocol):
    """What this layer needs of a partition's RocksDB (rocksdict ``Rdict``, raw mode)."""

    def get(self, key: Any) -> Any: ...  # bytes → bytes | None; list[bytes] → list (multi-get)

    def write(self, batch: Any) -> None: ...

    def items(self, backwards: bool = ..., from_key: Any = ...) -> Iterator[tuple[bytes, bytes]]: ...


def encode(value: Json | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def write_batch(values: Iterable[tuple[bytes, bytes | None]], offset: int | None) -> Any:
    """One atomic RocksDB batch: ``values`` (``None`` deletes) and the persisted offset."""
    from rocksdict import WriteBatch

    batch = WriteBatch(raw_mode=True)
    for key, value in values:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    if offset is not None:
        batch.put(OFFSET_KEY, str(offset).encode())
    return batch


class KeyedTable:
    """Per-key JSON entries of one table, by ``sku|location`` (or any string) key."""

    def __init__(
        self,
        name: str,
        changelog_topic: str,
        partitions: int,
        db_for: Callable[[int], PartitionDB],
        deliver: Deliver,
        slice_seconds: float | None = None,
    ) -> None:
        self.name = name
        self.changelog_topic = changelog_topic
        self.partitions = partitions
        self._db_for = db_for
        self._deliver = deliver
        #: a flush writes local state in slices of about this long, the loop free in
        #: between (RocksDB holds the GIL while it writes: ~3 µs an entry on a slow
        #: machine, 2,000 a run); None: each partition in one write
        self._slices = Slicer(slice_seconds, first=500) if slice_seconds else None
        #: partition → key bytes → value bytes (None: delete), not yet sent
        self._staged: dict[int, dict[bytes, bytes | None]] = {}
        #: what a flush in progress sends (still read before local state)
        self._in_flight: dict[int, dict[bytes, bytes | None]] = {}
        #: the part of it being written to local state (its marker counts already kept)
        self._writing: dict[int, dict[bytes, bytes | None]] = {}
        self._lock = asyncio.Lock()
        #: (partition, marker kind) → markers in local state, kept up to date by flushes
        self._side_counts: dict[tuple[int, bytes], int] = {}

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions)

    # --- reads (any context) ----------------------------------------------------------

    def get_raw(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending(partition, key)
        return self._db_for(partition).get(key) if pending is _ABSENT else pending

    def get_raw_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """Several keys of one partition in one RocksDB multi-get (cheaper per key than
        point reads), staged and in-flight writes overlaid."""
        found: list[bytes | None] = self._db_for(partition).get(keys) if keys else []
        if self._staged or self._in_flight:
            for index, key in enumerate(keys):
                pending = self._pending(partition, key)
                if pending is not _ABSENT:
                    found[index] = pending
        return found

    def get_many(self, partition: int, keys: list[str]) -> list[Json | None]:
        """Entries of several keys of ``partition`` (one multi-get)."""
        return [
            orjson.loads(raw) if raw is not None else None
            for raw in self.get_raw_many(partition, [key.encode() for key in keys])
        ]

    def marks(self, kind: bytes, partition: int, keys: list[str]) -> list[bool]:
        """Whether each key of ``partition`` has the ``kind`` marker (one multi-get)."""
        found = self.get_raw_many(partition, [_side_key(kind, key) for key in keys])
        return [raw is not None for raw in found]

    def get(self, key: str, partition: int | None = None) -> Json | None:
        """One key's entry (decodes that key only); ``partition`` when the caller knows
        it (the hash of a key is not cached at catalogue scale)."""
        where = self.partition_of(key) if partition is None else partition
        raw = self.get_raw(where, key.encode())
        return orjson.loads(raw) if raw is not None else None

    def items(self, partition: int) -> Iterator[tuple[str, Json]]:
        """Every entry of a partition, by key order, from local state (a full scan: for
        explicit full passes such as a full resync, never per event or per request)."""
        for key, raw in self._db_for(partition).items():
            if key.startswith(SIDE) or key == OFFSET_KEY:
                continue
            pending = self._pending(partition, key)
            if pending is _ABSENT:
                yield key.decode(), orjson.loads(raw)
            elif pending is not None:
                yield key.decode(), orjson.loads(pending)

    def side_keys(self, partition: int, kind: bytes, *, staged: bool = True) -> list[str]:
        """The keys marked with ``kind`` in a partition (:meth:`mark`), staged marks
        included unless ``staged`` is false. Reads the markers only, not the entries (all
        of them: :meth:`iter_side_keys` for a bounded walk)."""
        return list(self.iter_side_keys(partition, kind, staged=staged))

    def iter_side_keys(
        self, partition: int, kind: bytes, after: str | None = None, *, staged: bool = True
    ) -> Iterator[str]:
        """The keys marked with ``kind`` in a partition, in key order, from the first after
        ``after`` (all when ``None``), read lazily from one RocksDB iterator over the
        markers: a caller that stops after n keys read about n markers, whatever the
        catalogue holds. Staged and in-flight marks are overlaid (the newest wins), as of
        the first key read: held across an ``await`` (the sync flush reads its candidates
        in slices), it reads the markers as they were then (RocksDB's iterator is a
        snapshot), so a key marked meanwhile waits for the next walk."""
        prefix = SIDE + kind + b"\x00"
        start = prefix + after.encode() if after is not None else prefix
        pending: dict[bytes, bool] = {}
        for layer in (self._in_flight, self._staged) if staged else ():
            for key, value in layer.get(partition, {}).items():
                if key.startswith(prefix) and (after is None or key > start):
                    pending[key] = value is not None
        overlay = sorted(key for key, on in pending.items() if on)
        at = 0
        for key, _ in self._db_for(partition).items(from_key=start):
            if not key.startswith(prefix):
                break
            if key in pending or (after is not None and key == start):
                continue
            while at < len(overlay) and overlay[at] < key:
                yield overlay[at][len(prefix):].decode()
                at += 1
            yield key[len(prefix):].decode()
        for key in overlay[at:]:
            yield key[len(prefix):].decode()

    def side_count(self, partition: int, kind: bytes) -> int:
        """How many keys of a partition local state marks with ``kind``: counted once
        (a read of the markers), then kept by every flush; :meth:`forget_counts` after
        anything else wrote the partition's database (a recovery, a standby)."""
        found = self._side_counts.get((partition, kind))
        if found is None:
            found = len(self.side_keys(partition, kind, staged=False))
            writing = self._writing.get(partition)
            if writing:  # counted between two slices of a local write: the rest of it too
                found += self._marker_delta(self._db_for(partition), writing, kind)
            self._side_counts[(partition, kind)] = found
        return found

    def forget_counts(self) -> None:
        self._side_counts.clear()

    def is_marked(self, kind: bytes, key: str) -> bool:
        return self.get_raw(self.partition_of(key), _side_key(kind, key)) is not None

    def _pending(self, partition: int, key: bytes) -> Any:
        for layer in (self._staged, self._in_flight):
            part = layer.get(partition)
            if part is not None and key in part:
                return part[key]
        return _ABSENT

    # --- writes (the owner of the key's partition) --------------------------------------

    def put(self, key: str, value: Json | None, partition: int | None = None) -> None:
        """Stage ``value`` for ``key`` (``None`` deletes); sent by the next :meth:`flush`."""
        where = self.partition_of(key) if partition is None else partition
        self._stage(where, key.encode(), encode(value))

    def mark(self, kind: bytes, key: str, on: bool, partition: int | None = None) -> bool:
        """Set or clear the ``kind`` marker of ``key`` (a side key of the key's partition,
        listed by :meth:`side_keys` without a scan of the entries); True when it changed."""
        partition = self.partition_of(key) if partition is None else partition
        was = self.get_raw(partition, _side_key(kind, key)) is not None
        return self.set_mark(kind, key, on, was, partition)

    def set_mark(self, kind: bytes, key: str, on: bool, was: bool, partition: int) -> bool:
        """:meth:`mark` when the caller read the marker already (``was``, :meth:`marks`)."""
        if was == on:
            return False
        self._stage(partition, _side_key(kind, key), b"1" if on else None)
        return True

    def update(
        self,
        keys: Iterable[str],
        change: Callable[[str, Json | None], tuple[Json | None, bool]],
        partition: int | None = None,
    ) -> list[str]:
        """Apply ``change(key, old) -> (new, changed)`` to each key (all of ``partition``
        when given); ``change`` may mutate ``old`` in place and ``new`` of ``None``
        deletes. Returns the keys that changed, whose new values are staged."""
        changed: list[str] = []
        unique = list(dict.fromkeys(keys))
        if partition is None:
            olds = [self.get(key) for key in unique]
        else:
            olds = self.get_many(partition, unique)
        for key, old in zip(unique, olds, strict=True):
            new, was_changed = change(key, old)
            if was_changed:
                self.put(key, new, partition)
                changed.append(key)
        return changed

    def _stage(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._staged.setdefault(partition, {})[key] = value

    @property
    def staged(self) -> int:
        return sum(len(part) for part in self._staged.values())

    async def flush(self, source: str | None = None) -> int:
        """Send every staged write to the changelog, wait until the broker has all of it,
        then write it to local state; returns the number of writes. A failure leaves the
        writes staged (a retry sends them again: same key, same value)."""
        async with self._lock:
            if not self._staged:
                return 0
            batch, self._staged = self._staged, {}
            self._in_flight = batch
            try:
                last = await self._deliver(
                    self.changelog_topic,
                    {partition: list(part.items()) for partition, part in batch.items()},
                    source,
                )
            except BaseException:
                self._in_flight = {}
                for partition, part in batch.items():  # newer staged writes win
                    part.update(self._staged.get(partition, {}))
                self._staged = batch
                raise
            try:  # read from the batch until local state has all of it
                await self._write_local(batch, last)
            finally:
                self._in_flight = {}
            return sum(len(part) for part in batch.values())

    async def _write_local(self, batch: dict[int, dict[bytes, bytes | None]], last: dict[int, int]) -> None:
        """Write a delivered batch to local state: each partition's persisted offset with
        its last entries (a crash between two slices replays the partition's changelog
        from the offset before: the same values again). Sliced by time when the table was
        given a budget; a flush cancelled between two slices writes the rest before it
        ends (local state is never left behind what was read from the batch)."""
        for partition, part in batch.items():
            self._count_sides(partition, self._db_for(partition), part)
        self._writing = batch
        try:
            await self._write_slices(batch, last)
        finally:
            self._writing = {}

    async def _write_slices(self, batch: dict[int, dict[bytes, bytes | None]], last: dict[int, int]) -> None:
        entries = [(partition, item) for partition, part in batch.items() for item in part.items()]
        if self._slices is None:  # one write per partition
            self._write_entries(entries, 0, len(entries), last)
            return
        done = 0
        try:
            while done < len(entries):
                if done:
                    await breathe()
                began = self._slices.clock()
                upto = min(len(entries), done + self._slices.size)
                self._write_entries(entries, done, upto, last)
                self._slices.took(upto - done, self._slices.clock() - began)
                done = upto
        except BaseException:
            self._write_entries(entries, done, len(entries), last)
            raise

    def _write_entries(
        self,
        entries: list[tuple[int, tuple[bytes, bytes | None]]],
        begin: int,
        end: int,
        last: dict[int, int],
    ) -> None:
        """Write ``entries[begin:end]`` (by partition, in order), one batch per partition;
        a partition's offset goes with the batch holding its last entry."""
        at = begin
        while at < end:
            partition = entries[at][0]
            upto = at
            while upto < end and entries[upto][0] == partition:
                upto += 1
            finishes = upto == len(entries) or entries[upto][0] != partition
            offset = last.get(partition) if finishes else None
            items = (item for _, item in entries[at:upto])
            self._db_for(partition).write(write_batch(items, offset))
            at = upto

    def _count_sides(self, partition: int, db: PartitionDB, part: dict[bytes, bytes | None]) -> None:
        """Adjust the kept marker counts of ``partition`` for a batch about to be written
        (the markers' old values in one multi-get)."""
        for (counted, kind), count in list(self._side_counts.items()):
            if counted == partition:
                self._side_counts[(partition, kind)] = count + self._marker_delta(db, part, kind)

    @staticmethod
    def _marker_delta(db: PartitionDB, part: dict[bytes, bytes | None], kind: bytes) -> int:
        """How many more ``kind`` markers local state holds once ``part`` is written (the
        markers' present values in one multi-get)."""
        prefix = SIDE + kind + b"\x00"
        keys = [key for key in part if key.startswith(prefix)]
        if not keys:
            return 0
        olds = db.get(keys)
        return sum(part[key] is not None for key in keys) - sum(old is not None for old in olds)


_ABSENT = object()


async def flush_all(tables: Sequence[KeyedTable], source: str | None = None) -> None:
    """Flush several tables at once: their sends share the producer's batches, so the
    wait for the broker is paid once (crash-safe in any order: each table's local state
    still follows its own changelog)."""
    await asyncio.gather(*(table.flush(source) for table in tables))


def _side_key(kind: bytes, key: str) -> bytes:
    return SIDE + kind + b"\x00" + key.encode()


#: set on the Faust table of every per-key table (see :func:`changelog_first_tables`)
_CHANGELOG_FIRST = "_stream_app_changelog_first"


def changelog_first_tables(app: faust.App) -> set[str]:
    """Names of the app's tables whose local state is never ahead of their changelog:
    after a kill -9 reading the changelog's tail restores them, also when another worker
    wrote them meanwhile (stream_app.local_state keeps them)."""
    return {str(name) for name, table in app.tables.items() if getattr(table, _CHANGELOG_FIRST, False)}


def define_keyed_table(
    app: faust.App,
    name: str,
    partitions: int,
    help_: str,
    deliver: Deliver,
    slice_seconds: float | None = None,
) -> KeyedTable:
    """A Faust table of raw bytes (its changelog, recovery and standbys) and the per-key
    layer over its partition databases (``slice_seconds``: :class:`KeyedTable`)."""
    table = app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        help=help_,
    )
    setattr(table, _CHANGELOG_FIRST, True)
    return KeyedTable(
        name,
        str(table.changelog_topic.get_topic_name()),
        partitions,
        lambda partition: partition_db(table, partition),
        deliver,
        slice_seconds,
    )
