"""Direct access to the RocksDB database of one table partition (Faust's store).

:mod:`tables.keyed` reads and writes a partition's database itself (one key per read,
one atomic batch per flush) instead of going through Faust's ``table[key]``, whose
every write queues its own changelog message. Faust's RocksDB store exposes the
per-partition database only through the private ``_db_for_partition`` (it opens the
database on first use); :func:`check_store_access` is the start-up self-check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust

#: Faust's key for the last changelog offset a partition's database holds
OFFSET_KEY = b"__faust\0offset__"


def partition_db(table: faust.types.TableT, partition: int) -> Any:
    """The raw-mode rocksdict ``Rdict`` of ``table``'s partition (opened if needed)."""
    store: Any = table.data
    return store._db_for_partition(partition)


def partition_items(table: faust.types.TableT, partition: int) -> Iterator[tuple[str, Any]]:
    """(decoded key, stored value) of every entry of ``partition`` in local state (Faust's
    ``_visible_items`` of the partition's database: no tombstones)."""
    store: Any = table.data
    for key, value in store._visible_items(partition_db(table, partition)):
        yield str(store._decode_key(key)), value


def estimated_keys(table: faust.types.TableT, partitions: set[int]) -> int:
    """RocksDB's estimate of the entries of ``table`` in those of ``partitions`` whose
    database is open here (``rocksdb.estimate-num-keys``: O(1) per partition, never a
    scan; opens nothing)."""
    store: Any = table.data
    dbs = getattr(store, "_dbs", None) or {}
    total = 0
    for partition in partitions:
        db = dbs.get(partition)
        if db is not None:
            total += db.property_int_value("rocksdb.estimate-num-keys") or 0
    return total


def check_store_access(table: faust.types.TableT) -> str | None:
    """Why :func:`partition_db` cannot work on ``table`` (None: it can)."""
    store: Any = table.data
    if not callable(getattr(store, "_db_for_partition", None)):
        return (f"table {table.name}: Faust's store {type(store).__name__} has no "
                "_db_for_partition (per-key tables need the RocksDB store)")
    if not isinstance(getattr(store, "_dbs", None), dict):
        return f"table {table.name}: Faust's store {type(store).__name__} has no _dbs"
    for name in ("_visible_items", "_decode_key"):
        if not callable(getattr(store, name, None)):
            return f"table {table.name}: Faust's store {type(store).__name__} has no {name}"
    if getattr(store, "offset_key", OFFSET_KEY) != OFFSET_KEY:
        return f"table {table.name}: Faust's store keeps its offset under another key"
    return None
