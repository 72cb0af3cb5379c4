"""Faust's RocksDB store (through ``rocksdict``), with each key kept in its own partition's database,
and erasure that reaches the store's files.

Faust's store puts a written key into the database of the *current event's* partition. In a
``take()`` batch that is whichever record came last, not the key's: the key would land in another
partition's database, and after a restart a stale copy there could be read back. Spoor's keys are
user keys, partitioned by the default partitioner (murmur2, as the producer and the changelog do),
so the store places and looks up every key by that rule.

Deleting a key only writes a delete marker: the values it replaced stay in the write-ahead log and
the SST files, and the files' key ranges in the MANIFEST, until RocksDB happens to compact them.
``purge_erased`` removes them (docs/privacy.md, "Erasure reaches every copy"): for each partition
database holding an erased key,
1. flush the memtable: its values go to an SST file and the write-ahead log that held them (and the
   delete markers, which name the keys) is deleted;
2. compact the whole database down to the last level, forced: a delete marker and every value it
   shadows are dropped there (Spoor takes no RocksDB snapshots that could keep them). The whole
   range, not the keys': RocksDB's info log (``LOG``) prints a manual compaction's bounds, which
   would copy the ids into it;
3. one more change to the files (a put and delete of a marker key in one write batch, flushed), so
   that RocksDB starts a new MANIFEST: the store's databases are opened with a MANIFEST size limit
   of one byte, so every change to the files writes a new MANIFEST holding only the live files and
   deletes the old one (a MANIFEST otherwise keeps every file ever added, with its first and last key,
   up to 1 GiB).
A rebuild from a changelog the broker has not compacted yet replays an erased id's values and then its
tombstone: the store notes each partition that replayed a tombstone and purges it the same way once
recovery completes.
Cost: the size of the partition's database, once per batch that holds an erasure (26 MiB of SST files,
200,000 keys, compacted in 1.1 s wall, 0.5 s CPU on the 2-core test machine, on a thread: the event loop
ran on).
"""

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import rocksdict
from aiokafka.partitioner import murmur2
from faust.stores.rocksdb import RocksDBOptions

from spoor.stream_processors.faust_internals import PlacedRocksDBStore

log = logging.getLogger(__name__)
PURGES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spoor-purge")  # one compaction at a time
PURGE_MARKER = b"\0spoor-purge"  # written and deleted in one batch: no reader ever sees it
MANIFEST_ROLL_BYTES = 1  # every change to the files starts a new MANIFEST (a few hundred bytes each)


@lru_cache(maxsize=100_000)  # murmur2 is pure Python: a few microseconds per call
def key_partition(key: bytes, partitions: int) -> int:
    """Partition of a key under Kafka's default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class ManifestRollingOptions(RocksDBOptions):
    """Faust's RocksDB options, with a new MANIFEST at every change to the files (step 3 above)."""

    def as_options(self):
        options = super().as_options()
        if self.use_rocksdict:
            options.set_max_manifest_file_size(MANIFEST_ROLL_BYTES)
        return options


class KeyPartitionedStore(PlacedRocksDBStore):
    """The rule; faust_internals.PlacedRocksDBStore applies it in the store's (private) read and write methods."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # As Faust's Store.__init__ builds its options (``options`` without the driver), with the MANIFEST rule.
        self.rocksdb_options = ManifestRollingOptions(**self.options, use_rocksdict=self.use_rocksdict)
        self.replayed_deletes: set[int] = set()  # partitions whose recovery replayed a tombstone

    def partition_for_key(self, key: bytes) -> int:
        return key_partition(key, self.table.partitions)

    def apply_changelog_batch(self, batch, to_key, to_value) -> None:
        """Faust's recovery write; notes the partitions that replayed a tombstone (an erased or merged id)."""
        batch = list(batch)
        super().apply_changelog_batch(batch, to_key, to_value)
        self.replayed_deletes.update(event.message.partition for event in batch if event.message.value is None)

    async def on_recovery_completed(self, active_tps, standby_tps) -> None:
        """A rebuild from a changelog not yet compacted replays an erased id's old values, then its
        tombstone: purge those databases once, when recovery is done, as erasure does."""
        await super().on_recovery_completed(active_tps, standby_tps)
        databases = self.open_databases(self.replayed_deletes)
        self.replayed_deletes.clear()
        if databases:
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(PURGES, lambda: [purge_database(db) for db in databases])
            log.info("recovery replayed deletes: %d local RocksDB databases compacted in %.2f s", len(databases),
                     time.perf_counter() - started)


def purge_database(db: rocksdict.Rdict) -> None:
    """Steps 1-3 of the module docstring on one open database (blocks: call it off the event loop)."""
    db.flush(True)
    compaction = rocksdict.CompactOptions()
    compaction.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
    db.compact_range(None, None, compaction)
    marker = rocksdict.WriteBatch(raw_mode=True)
    marker.put(PURGE_MARKER, b"")
    marker.delete(PURGE_MARKER)
    db.write(marker)
    db.flush(True)


def erased_databases(tables: Iterable, keys: Iterable[str]) -> list[rocksdict.Rdict]:
    """The open RocksDB databases of ``tables`` (None and tables in memory skipped) that keep one of ``keys``."""
    raw = [key.encode() for key in keys]
    stores = [getattr(table, "data", None) for table in tables]  # a Faust table's store (a test's dict has none)
    return [db for store in stores if isinstance(store, KeyPartitionedStore) and store.use_rocksdict
            for db in store.databases_holding(raw)]


async def purge_erased(tables: Iterable, keys: Iterable[str]) -> int:
    """Remove the erased ``keys``' old values and delete markers from the local files of ``tables``
    (call it once the keys are deleted); returns the number of databases purged. Runs on a thread:
    a compaction blocks for as long as it takes, and rocksdict releases the GIL meanwhile."""
    databases = erased_databases(tables, keys)
    if databases:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(PURGES, lambda: [purge_database(db) for db in databases])
        log.info("erasure: %d local RocksDB databases compacted in %.2f s", len(databases),
                 time.perf_counter() - started)
    return len(databases)
