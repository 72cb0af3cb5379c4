"""Faust's RocksDB store (through ``rocksdict``), with each key kept in its own partition's database.

Faust's store puts a written key into the database of the *current event's* partition. In a
``take()`` batch that is whichever record came last, not the key's: the key would land in another
partition's database, and after a restart a stale copy there could be read back. Spoor's keys are
user keys, partitioned by the default partitioner (murmur2, as the producer and the changelog do),
so the store places and looks up every key by that rule.
"""

from functools import lru_cache

from aiokafka.partitioner import murmur2

from spoor.stream_processors.faust_internals import PlacedRocksDBStore


@lru_cache(maxsize=100_000)  # murmur2 is pure Python: a few microseconds per call
def key_partition(key: bytes, partitions: int) -> int:
    """Partition of a key under Kafka's default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitionedStore(PlacedRocksDBStore):
    """The rule; faust_internals.PlacedRocksDBStore applies it in the store's (private) read and write methods."""

    def partition_for_key(self, key: bytes) -> int:
        return key_partition(key, self.table.partitions)
