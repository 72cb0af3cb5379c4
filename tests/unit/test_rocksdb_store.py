"""rocksdb_store.purge_erased on a real table and RocksDB store (rocksdict, in tmp_path): after an erasure
the erased key, its values and its delete marker are in none of the database's files (SST, write-ahead
log, MANIFEST, LOG, raw bytes), while another key's value stays readable."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP

from spoor.stream_processors import rocksdb_store
from spoor.stream_processors.durable_table import DurableTable
from spoor.stream_processors.rocksdb_store import KeyPartitionedStore, key_partition, purge_erased

BROKER = "kafka://127.0.0.1:9092"  # never connected to
PARTITIONS = 4
ERASED, KEPT = b"zelda-4f1c9e", b"bob-77d2a0"
SECRETS = [ERASED, b"zelda.4f1c9e@example.com", b"Zelda Quarrington"]


def table(tmp_path: Path, name: str = "user-profiles") -> DurableTable:
    app = faust.App(f"purge-{tmp_path.name}", broker=BROKER, store="rocksdb://", datadir=str(tmp_path),
                    key_serializer="raw", value_serializer="raw")
    return DurableTable(app, name=name, partitions=PARTITIONS, use_partitioner=True, key_type=bytes,
                        value_type=bytes, options={"driver": "rocksdict", "write_buffer_size": 1 << 20})


def found(folder: Path, needles: list[bytes]) -> dict[str, list[bytes]]:
    """{file: needles in its raw bytes, or in upper-case hex as RocksDB's LOG prints keys}."""
    hits = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        inside = [n for n in needles if n in data or n.hex().upper().encode() in data]
        if inside:
            hits[str(path.relative_to(folder))] = inside
    return hits


def fill(store, erased_in_sst: bool) -> None:
    for i in range(3000):  # other users, some in the erased key's database
        store[f"user-{i:05d}".encode()] = b'{"views": %d, "filler": "%s"}' % (i, b"x" * 200)
    store[ERASED] = b'{"email": "zelda.4f1c9e@example.com", "name": "Zelda Quarrington", "orders": 1}'
    store[KEPT] = b'{"email": "bob@example.com"}'
    if erased_in_sst:  # the first value flushed to an SST file (and named in the MANIFEST as a file's bound)
        for db in store.databases_holding([ERASED]):
            db.flush(True)
    store[ERASED] = b'{"email": "zelda.4f1c9e@example.com", "name": "Zelda Quarrington", "orders": 2}'
    del store[ERASED]


@pytest.mark.parametrize("erased_in_sst", [False, True], ids=["in-the-wal", "in-an-sst"])
def test_a_deleted_key_stays_in_the_files_until_purged_then_nothing_of_it_does(tmp_path, erased_in_sst):
    t = table(tmp_path)
    store = t.data
    assert isinstance(store, KeyPartitionedStore)
    fill(store, erased_in_sst)
    folder = store.partition_path(key_partition(ERASED, PARTITIONS))
    assert found(folder, SECRETS), "the control: a delete alone leaves the values in the files"

    assert asyncio.run(purge_erased([t, None], [ERASED.decode()])) == 1
    assert found(tmp_path, SECRETS) == {}
    assert ERASED not in store and store[KEPT] == b'{"email": "bob@example.com"}'
    assert store[b"user-00007"].startswith(b'{"views": 7,')
    assert ERASED not in store._key_index
    names = sorted(p.name for p in folder.iterdir())
    assert sum(name.startswith("MANIFEST-") for name in names) == 1, names


def test_a_purge_reaches_each_erased_keys_database_once_and_survives_a_reopen(tmp_path):
    t = table(tmp_path)
    store = t.data
    fill(store, True)
    elsewhere = next(k for k in (f"absent-{i}" for i in range(100))
                     if key_partition(k.encode(), PARTITIONS) != key_partition(ERASED, PARTITIONS))
    assert len(store._dbs) == PARTITIONS  # every partition's database is open: only two are purged
    assert asyncio.run(purge_erased([t], [elsewhere, ERASED.decode(), ERASED.decode()])) == 2
    assert asyncio.run(purge_erased([t], [])) == 0
    for db in store._dbs.values():
        db.close()
    store._dbs.clear()
    reopened = table(tmp_path).data
    for partition in range(PARTITIONS):  # what Faust does when the partitions are assigned
        reopened._db_for_partition(partition)
    assert ERASED not in reopened and reopened[b"user-00042"].startswith(b'{"views": 42,')
    assert found(tmp_path, SECRETS) == {}


def test_tables_in_memory_are_skipped(tmp_path):
    app = faust.App("purge-memory", broker=BROKER, store="memory://", datadir=str(tmp_path))
    memory = DurableTable(app, name="m", partitions=PARTITIONS, key_type=bytes, value_type=bytes)
    assert asyncio.run(purge_erased([memory], [ERASED.decode()])) == 0


def changelog_event(partition: int, offset: int, key: bytes, value: bytes | None):
    """What Faust hands ``apply_changelog_batch`` while it recovers a table from its changelog."""
    message = SimpleNamespace(tp=TP("purge-user-profiles-changelog", partition), offset=offset,
                              partition=partition, key=key, value=value)
    return SimpleNamespace(message=message)


def test_a_rebuild_that_replays_an_erased_ids_tombstone_purges_its_database_when_recovery_completes(tmp_path, monkeypatch):
    t = table(tmp_path)
    store = t.data
    erased_partition = key_partition(ERASED, PARTITIONS)
    kept_partition = next(p for p in range(PARTITIONS) if p != erased_partition)
    kept_key = next(k for k in (f"user-{i:05d}".encode() for i in range(1000))
                    if key_partition(k, PARTITIONS) == kept_partition)
    replay = [changelog_event(erased_partition, 0, ERASED, b'{"email": "zelda.4f1c9e@example.com", '
                                                           b'"name": "Zelda Quarrington"}'),
              changelog_event(kept_partition, 0, kept_key, b'{"views": 1}'),
              changelog_event(erased_partition, 1, ERASED, None)]  # the erasure's tombstone, not yet compacted
    store.apply_changelog_batch(iter(replay), None, None)
    assert found(tmp_path, SECRETS), "the control: the replayed value stays in the files"

    purged = []
    real_purge = rocksdb_store.purge_database
    monkeypatch.setattr(rocksdb_store, "purge_database", lambda db: (purged.append(db), real_purge(db)))
    asyncio.run(store.on_recovery_completed(set(), set()))
    assert purged == [store._dbs[erased_partition]]  # only the database that replayed a tombstone
    assert found(tmp_path, SECRETS) == {}
    assert ERASED not in store and store[kept_key] == b'{"views": 1}'
    asyncio.run(store.on_recovery_completed(set(), set()))
    assert len(purged) == 1  # nothing replayed since: nothing purged again
