"""A per SKU/location view over a Faust table whose entries are buckets of keys.

Each table entry holds many SKU/locations of one partition (``"<partition>:<n>"`` →
JSON object of key → state). An agent that applies a batch of records writes each
touched bucket once: one changelog message per bucket instead of one per record, which
is what lets a worker apply tens of thousands of records per second (FAUST-NOTES: the
changelog producer bounds table writes to a few thousand per second).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
import orjson

from stream_app.partitioning import bucket_for, partition_for

Json = dict[str, Any]


class BucketedTable:
    def __init__(self, table: faust.types.TableT, partitions: int, buckets: int) -> None:
        self.table = table
        self.partitions = partitions
        self.buckets = buckets

    @property
    def name(self) -> str:
        return str(self.table.name)

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions)

    def bucket_of(self, key: str) -> str:
        return bucket_for(key, self.partition_of(key), self.buckets)

    def load_bucket(self, bucket: str) -> Json:
        raw = self.table.get(bucket)
        return orjson.loads(raw) if raw else {}

    def get(self, key: str) -> Json | None:
        """Read one key (any context: agents, timers, web views)."""
        value: Json | None = self.load_bucket(self.bucket_of(key)).get(key)
        return value

    def update(
        self,
        keys: Iterable[str],
        change: Callable[[str, Json | None], tuple[Json | None, bool]],
        rewrite: bool = False,
    ) -> list[str]:
        """Apply ``change(key, old) -> (new, changed)`` to keys (agent context only).

        ``change`` may mutate ``old`` in place; ``new`` of ``None`` deletes the key. Each
        touched bucket is written at most once; with ``rewrite`` also when nothing in it
        changed (a replayed input after a kill -9: local state may hold its effect while
        the changelog does not, see stream_app.local_state). Returns the keys that changed.
        """
        by_bucket: dict[str, list[str]] = {}
        for key in keys:
            by_bucket.setdefault(self.bucket_of(key), []).append(key)
        changed: list[str] = []
        for bucket, bucket_keys in by_bucket.items():
            content = self.load_bucket(bucket)
            dirty = False
            for key in bucket_keys:
                new, was_changed = change(key, content.get(key))
                if not was_changed:
                    continue
                if new is None:
                    content.pop(key, None)
                else:
                    content[key] = new
                dirty = True
                changed.append(key)
            if dirty or (rewrite and content):
                self.table[bucket] = orjson.dumps(content)
        return changed

    def items_in_partitions(self, partitions: Iterable[int]) -> Iterator[tuple[str, Json]]:
        """Every key of the given partitions (reads local state only)."""
        for partition in partitions:
            for n in range(self.buckets):
                yield from self.load_bucket(f"{partition}:{n}").items()


def define_bucketed_table(
    app: faust.App, name: str, partitions: int, buckets: int, help_: str
) -> BucketedTable:
    table = app.Table(
        name,
        default=None,
        key_type=str,  # JSON-serialized key
        value_type=bytes,  # Faust picks the raw serializer for bytes
        partitions=partitions,
        help=help_,
    )
    return BucketedTable(table, partitions, buckets)
