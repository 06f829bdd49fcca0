"""Which partition a SKU/location lives in, computed the way Kafka's default partitioner does.

Every per SKU/location topic and table of the app uses the same function and the same
partition count, so partition *p* of each is owned by the same worker and a decision
never needs data from another partition.
"""

from __future__ import annotations

from murmurhash2 import murmurhash2

#: the seed of Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2)
KAFKA_SEED = 0x9747B28C


def kafka_murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit int: the standard MurmurHash2 with
    Kafka's seed, in C (aiokafka's pure-Python one took 3 µs a key, and a cache of hashes
    misses on every key of a catalogue larger than the cache; tests check both agree)."""
    return int(murmurhash2(data, KAFKA_SEED)) & 0xFFFFFFFF


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner: ``murmur2(key) & 0x7fffffff % partitions``."""
    return (kafka_murmur2(key.encode()) & 0x7FFFFFFF) % partitions
