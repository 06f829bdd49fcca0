"""The ``reservations`` and ``order_results`` tables, and the books cached from them.

* ``reservations``: CHUNKS of reservations (the source of truth). Every reservation of one
  SKU/location lives in the partition of ``sku|location``, in the chunk named by its
  queue and arrival: ``C-<key>-<shipDate>-<sequence // chunk_size>`` → JSON object
  reservationId → reservation. One changelog write per TOUCHED chunk per save, not per
  reservation: arrivals are consecutive sequences, so a message deciding 1,000 items
  writes a handful of chunks. (Faust's changelog producer bounds a worker to a few
  thousand table writes per second — FAUST-NOTES — which per-reservation writes hit
  long before the decisions themselves cost anything.)
* ``order_results``: orderId → JSON ``{orderId, itemCount, decisions, result}`` in the
  partition of the orderId (the order collector).

:class:`ReservationStore` keeps a per-worker CACHE of :class:`ReservationBook` objects
derived from the table's local data, one partition at a time, built lazily on first use
and dropped on every rebalance. Agents mutate a cached book and then :meth:`save` the
reservations the operation changed, synchronously within the same event, so the cache
and the table never disagree for longer than one (synchronous) step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.types import TableT
from faust.web.exceptions import ServiceUnavailable

from stream_app.broker.stores import partition_items
from stream_app.domain.book import ReservationBook
from stream_app.domain.ids import encode_key, key_of_reservation_id, parse_iso
from stream_app.domain.model import Reservation
from stream_app.partitioning import partition_for
from stream_app.records import split_key

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: reservations per stored chunk (part of the storage format: a chunk's key is derived
#: from it, so it must not change under existing data)
CHUNK_SIZE = 16


class Recovering(ServiceUnavailable):
    """The books of a partition were asked for while its changelog is being read (a
    Faust web error: a view raising it answers 503 with the reason)."""


@dataclass
class PartitionBooks:
    """The books of one partition: by ``sku|location`` key, plus orderId → keys."""

    partition: int
    books: dict[str, ReservationBook] = field(default_factory=dict)
    orders: dict[str, set[str]] = field(default_factory=dict)
    #: product category per key (selects the overbooking rate), from its reservations
    categories: dict[str, str | None] = field(default_factory=dict)
    #: the stored chunks: chunk key → reservationId → serialized reservation (what the
    #: table holds, so a save re-serializes only the reservations that changed)
    chunks: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def book(self, key: str) -> ReservationBook:
        found = self.books.get(key)
        if found is None:
            sku, location = split_key(key)
            found = self.books[key] = ReservationBook(sku, location)
        return found

    def note_order(self, order_id: str, key: str) -> None:
        self.orders.setdefault(order_id, set()).add(key)


def chunk_key(reservation: Reservation, chunk_size: int) -> str:
    """The table key of the chunk that stores ``reservation`` (fixed for its lifetime:
    the queue and the arrival sequence never change)."""
    encoded = encode_key(f"{reservation.sku}|{reservation.location}")
    number = reservation.sequence // chunk_size
    return f"C-{encoded}-{reservation.ship_date.isoformat()}-{number}"


#: what one operation wrote: each reservation with its stored bytes AS OF that operation
#: (serialized when the operation ends: a later operation may change the same object)
Step = Sequence[tuple[Reservation, bytes]]


def stored_step(reservations: Iterable[Reservation]) -> list[tuple[Reservation, bytes]]:
    return [(r, orjson.dumps(r.to_stored())) for r in reservations]


def plan_writes(
    steps: Iterable[Step],
    chunk_of: Callable[[Reservation], str],
    live: dict[str, dict[str, bytes]],
) -> list[tuple[str, dict[str, bytes]]]:
    """The chunk writes of a group of operations, in an order a crash cannot make
    inconsistent. ``live`` (chunk → reservationId → stored bytes) is brought to the new
    state; the result is ``(chunk, entries)`` in write order.

    A kill -9 keeps some prefix of a partition's changelog writes. Writing each touched
    chunk once, at its latest state, can keep a later operation's effect while losing an
    earlier one it depended on (a cancel that promoted a waitlisted pre-order written,
    that pre-order's own placement lost); a replay then decides the lost operation
    against a state it never saw. So the writes follow the operations: each operation's
    chunks (its subject's first) are written as they are after that operation, and
    every prefix of the writes is the state after some prefix of the operations, plus
    part of the next one with its subject durable (whose recorded effects a replay
    re-applies). Consecutive operations on the same chunk coalesce into one write, so a
    burst of placements still writes each chunk about once.
    """
    plan: list[tuple[str, dict[str, bytes]]] = []
    for step in steps:
        touched: dict[str, dict[str, bytes]] = {}
        for reservation, stored in step:
            touched.setdefault(chunk_of(reservation), {})[reservation.reservation_id] = stored
        for number, (name, changed) in enumerate(touched.items()):
            entries = live.setdefault(name, {})
            entries.update(changed)
            if number == 0 and plan and plan[-1][0] == name:
                plan[-1][1].update(changed)  # the same chunk as the last write: one write
            else:
                plan.append((name, dict(entries)))
    return plan


def encode_chunk(entries: dict[str, bytes]) -> bytes:
    """``{"<rid>": <reservation>, ...}`` from already serialized reservations."""
    return b"{" + b",".join(orjson.dumps(rid) + b":" + raw for rid, raw in entries.items()) + b"}"


class ReservationStore:
    """Books of the partitions this worker owns, derived from the ``reservations`` table."""

    def __init__(
        self, app: faust.App, table: TableT, partitions: int, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self.app = app
        self.table = table
        self.partitions = partitions
        self.chunk_size = chunk_size
        self._parts: dict[int, PartitionBooks] = {}
        self._generation = -1
        self._owned: tuple[int, frozenset[int]] | None = None  # (rebalance, partitions)
        #: requestId → future resolved by the agent that applied the command (web waits)
        self._command_waiters: dict[str, asyncio.Future[Json]] = {}

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions)

    def owns(self, partition: int) -> bool:
        return partition in self.owned_partitions()

    def owned_partitions(self) -> frozenset[int]:
        """The partitions this worker owns now. Faust's ``assigned_actives()`` builds a
        set of every assigned topic partition per call (measured: 8% of a worker's CPU
        at 500 POST /pre-orders a second, asked 9 times per request), so the answer is
        kept per rebalance once it has ended; during one it is read afresh every time."""
        app = self.app
        if app.consumer is None:
            return frozenset()
        generation = app.rebalancing_count
        if self._owned is not None and self._owned[0] == generation and not app.rebalancing:
            return self._owned[1]
        topic = self.changelog_topic
        owned = frozenset(tp.partition for tp in app.assignor.assigned_actives()
                          if tp.topic == topic)
        if not app.rebalancing:
            self._owned = (generation, owned)
        return owned

    # --- the cache -----------------------------------------------------------------

    def clear(self) -> None:
        """Drop every cached book: they are rebuilt from the table on use."""
        self._parts.clear()

    def _cacheable(self) -> bool:
        """Cache per rebalance (the cache of a generation dies with it), except while the
        changelogs are being read: local state is still catching up then.

        Agents only ever see the cache: Faust resumes a partition's streams only after
        its recovery, so every agent working on a partition shares ONE book object. (Not
        caching for the whole rebalance, as before, gave each agent its own copy while
        Faust delivered events between the end of recovery and "worker ready": a replayed
        placement rewrote a reservation from a copy made before the release confirmed it.)
        """
        app = self.app
        generation = app.rebalancing_count
        if generation != self._generation:
            self._parts.clear()
            self._generation = generation
        return bool(app.consumer is not None and generation > 0 and not self._recovering())

    def _recovering(self) -> bool:
        recovery = getattr(self.app.tables, "recovery", None)
        return bool(getattr(recovery, "in_recovery", False))

    def books(self, partition: int) -> PartitionBooks:
        """The books of ``partition``, built from local table data once per rebalance,
        on first use after the changelogs were read.

        While they are being read, :class:`Recovering` is raised instead (only views ask
        then: streams are paused; a view answers 503 and the caller retries): building a
        partition's books costs O(its reservations), too much per request."""
        if not self._cacheable():
            if self._recovering():
                raise Recovering(f"partition {partition} is being recovered from its changelog; retry shortly")
            return self._rebuild(partition)
        found = self._parts.get(partition)
        if found is None:
            found = self._parts[partition] = self._rebuild(partition)
        return found

    def _local_items(self, partition: int) -> Iterator[tuple[str, bytes]]:
        """(chunk key, stored value) of every chunk of ``partition`` in local state."""
        if hasattr(self.table.data, "_db_for_partition"):  # RocksDB: one database per partition
            yield from partition_items(self.table, partition)
            return
        for key, value in self.table.items():  # memory store (unit tests)
            owner = owner_of_chunk(str(key))
            if owner is not None and self.partition_of(owner) == partition:
                yield str(key), value

    def _rebuild(self, partition: int) -> PartitionBooks:
        grouped: dict[str, list[Reservation]] = {}
        part = PartitionBooks(partition)
        for chunk, raw in self._local_items(partition):
            if not raw:
                continue
            try:
                stored = orjson.loads(raw)
                entries = {rid: orjson.dumps(data) for rid, data in stored.items()}
                reservations = [Reservation.from_dict(data) for data in stored.values()]
            except Exception:
                log.exception("unreadable reservation chunk %s in partition %d", chunk, partition)
                continue
            part.chunks[chunk] = entries
            for reservation in reservations:
                key = f"{reservation.sku}|{reservation.location}"
                grouped.setdefault(key, []).append(reservation)
        for key, reservations in grouped.items():
            sku, location = split_key(key)
            part.books[key] = ReservationBook.restore(sku, location, reservations)
            for reservation in reservations:
                part.note_order(reservation.order_id, key)
                if reservation.category is not None:
                    part.categories[key] = reservation.category
        if grouped:
            log.info(
                "reservation books of partition %d rebuilt: %d books, %d reservations",
                partition,
                len(grouped),
                sum(len(r) for r in grouped.values()),
            )
        return part

    def existing_book(self, key: str) -> ReservationBook | None:
        """The book of ``key`` if any (read-only use: views, held units)."""
        return self.books(self.partition_of(key)).books.get(key)

    def find(self, rid: str) -> tuple[ReservationBook, Reservation] | None:
        key = key_of_reservation_id(rid)
        if key is None:
            return None
        book = self.existing_book(key)
        found = book.get(rid) if book is not None else None
        return None if found is None or book is None else (book, found)

    def order_reservations(self, order_id: str) -> list[Json]:
        """Reservations of ``order_id`` in the partitions this worker owns (live state,
        by item index): how a single-item order is found without an order table."""
        found: list[Json] = []
        for partition in sorted(self.owned_partitions()):
            part = self.books(partition)
            for key in part.orders.get(order_id, ()):
                book = part.books[key]
                for reservation in book.order_reservations(order_id):
                    data = book.reservation_dict(reservation)
                    found.append(data)
        return sorted(found, key=lambda r: int(r.get("itemIndex", 0)))

    def held_units(self, key: str, partition: int | None = None) -> int:
        """Units held by active reservations of ``key`` (0 when unknown or not owned);
        ``partition``: the key's, when the caller knows it."""
        partition = self.partition_of(key) if partition is None else partition
        if partition not in self._parts and not self.owns(partition):
            return 0
        book = self.books(partition).books.get(key)
        return book.held_units() if book is not None else 0

    def book_keys(self, partition: int) -> list[str]:
        """The SKU/locations of ``partition`` that have a book (owned partitions only)."""
        if partition not in self._parts and not self.owns(partition):
            return []
        return list(self.books(partition).books)

    # --- writes (agent context only) -----------------------------------------------

    def save(self, steps: Iterable[Step]) -> int:
        """Write what a group of operations changed (agent context, while handling an
        event of their partition): ``steps`` holds each operation's reservations (with their bytes
        as of that operation), in the order the operations ran, its subject first. Chunks are written in the order of
        :func:`plan_writes`; returns the chunk writes made."""
        plan: list[tuple[str, dict[str, bytes]]] = []
        by_partition: dict[int, list[Step]] = {}
        for step in steps:
            if step:
                first = step[0][0]
                partition = self.partition_of(f"{first.sku}|{first.location}")
                by_partition.setdefault(partition, []).append(step)
        for partition, mine in by_partition.items():
            live = self.books(partition).chunks
            plan.extend(plan_writes(mine, lambda r: chunk_key(r, self.chunk_size), live))
        for name, entries in plan:
            self.table[name] = encode_chunk(entries)
        return len(plan)

    def prune(self, partition: int, before: datetime) -> int:
        """Forget the reservations of ``partition`` whose story ended before ``before``
        (:meth:`ReservationBook.prunable`) and write their chunks without them (an empty
        chunk becomes a tombstone). Agent context, an event of ``partition``. Returns how
        many were pruned."""
        part = self.books(partition)
        pruned = 0
        touched: set[str] = set()
        for key, book in list(part.books.items()):
            gone = book.prunable(before)
            if not gone:
                continue
            book.forget(gone)
            pruned += len(gone)
            for reservation in gone:
                chunk = chunk_key(reservation, self.chunk_size)
                part.chunks.get(chunk, {}).pop(reservation.reservation_id, None)
                touched.add(chunk)
                if not book.order_reservations(reservation.order_id):
                    keys = part.orders.get(reservation.order_id, set())
                    keys.discard(key)
                    if not keys:
                        part.orders.pop(reservation.order_id, None)
            if not len(book):
                del part.books[key]
                part.categories.pop(key, None)
        for chunk in sorted(touched):
            entries = part.chunks.get(chunk)
            if entries:
                self.table[chunk] = encode_chunk(entries)
            else:
                part.chunks.pop(chunk, None)
                if chunk in self.table:
                    del self.table[chunk]
        return pruned

    # --- web waits for command outcomes ----------------------------------------------

    def expect_command(self, request_id: str) -> asyncio.Future[Json]:
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._command_waiters[request_id] = future
        return future

    def forget_command(self, request_id: str) -> None:
        self._command_waiters.pop(request_id, None)

    def command_done(self, request_id: str | None, response: Json) -> None:
        if not request_id:
            return
        future = self._command_waiters.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(response)


class OrderResults:
    """The order collector's table: orderId → decisions so far and the published result."""

    def __init__(self, table: TableT, partitions: int) -> None:
        self.table = table
        self.partitions = partitions

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def partition_of(self, order_id: str) -> int:
        return partition_for(order_id, self.partitions)

    def get(self, order_id: str) -> Json | None:
        raw = self.table.get(order_id)
        return orjson.loads(raw) if raw else None

    def put(self, order_id: str, entry: Json) -> None:
        """Agent context only."""
        self.table[order_id] = orjson.dumps(entry)

    def prune(self, partition: int, before: datetime) -> int:
        """Delete the results of ``partition`` published for orders decided before
        ``before`` (every decision made then): one scan of the partition's local
        results, tombstones written (agent context, an event of ``partition``)."""
        stale = [
            order_id
            for order_id, raw in list(self.table.items())
            if raw and self.partition_of(str(order_id)) == partition
            and decided_before(orjson.loads(raw), before)
        ]
        for order_id in stale:
            del self.table[order_id]
        return len(stale)


def decided_before(entry: Json, before: datetime) -> bool:
    """Whether an order-results entry has its result and every decision was made (its
    reservation last changed when decided) before ``before``."""
    decisions = list((entry.get("decisions") or {}).values())
    if entry.get("result") is None or not decisions:
        return False
    stamps = [d.get("createdAt") or d.get("updatedAt") for d in decisions]
    return all(isinstance(t, str) and parse_iso(t) < before for t in stamps)


def owner_of_chunk(chunk: str) -> str | None:
    """The ``sku|location`` of a chunk key (None when it is not one)."""
    parts = chunk.rsplit("-", 4)  # C-<key>-YYYY-MM-DD-<n>; base64url may hold "-"
    if len(parts) != 5 or not parts[0].startswith("C-"):
        return None
    return key_of_reservation_id(f"R-{parts[0][2:]}-{'0' * 16}")


def define_reservation_tables(
    app: faust.App, partitions: int, chunk_size: int = CHUNK_SIZE
) -> tuple[ReservationStore, OrderResults]:
    reservations = app.Table(
        "reservations",
        default=None,
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        help="Every pre-order reservation, in chunks, in the partition of its SKU/location",
    )
    orders = app.Table(
        "order_results",
        default=None,
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        help="Item decisions and the result of every pre-order, by orderId",
    )
    store = ReservationStore(app, reservations, partitions, chunk_size)
    return store, OrderResults(orders, partitions)
