"""Which partition a SKU/location lives in, computed the way Kafka's default partitioner does.

Every per SKU/location topic and table of the app uses the same function and the same
partition count, so partition *p* of each is owned by the same worker and a decision
never needs data from another partition.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=131072)
def _hash(key: str) -> int:
    return int(murmur2(key.encode())) & 0x7FFFFFFF


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner: ``murmur2(key) & 0x7fffffff % partitions``."""
    return _hash(key) % partitions
