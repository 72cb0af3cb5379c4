"""CPU of two per-event costs of the worker beside its fold, in-process, for an A/B of two trees: figures, not a test.

- ``windows``: the metric windows (fold + close) of 150,000 simulated flood events (as bench/pipeline.py's
  make_batches, fixed start), 4 partitions, batches of 5,000; prints a digest of every closed row, which
  must be the same for both trees.
- ``changelog``: ``DurableTable.changelog_durable`` of 2,500 keys x 1.2 kB values on the real broker
  (`deploy/stack.sh infra`), 10 sends, the median of the last 8.
- ``rocksdb`` (the tree does not matter): 40,000 puts of 1.5 kB into a database opened with the worker's
  options, one ``put`` per key against one ``WriteBatch`` per 2,500 keys (process and main-thread CPU).

    .venv/bin/python bench/worker_bookkeeping.py "$PWD" windows|changelog
    git worktree add /tmp/old <commit>; .venv/bin/python bench/worker_bookkeeping.py /tmp/old windows

The first argument is the tree whose code runs (bench/source_tree.py). Alternate the trees and compare medians.
"""

import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.source_tree import use_tree  # noqa: E402

use_tree(sys.argv[1])
from aiokafka.partitioner import murmur2  # noqa: E402

from spoor.events import decode_record, encode_events  # noqa: E402

PARTITIONS = 4


def flood_events(n: int = 150_000) -> list:
    from spoor.cli.simulate import simulate
    from spoor.ingest.normalize import normalize
    start, received = datetime(2026, 12, 1, 10, tzinfo=timezone.utc), datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    messages: list = []
    while len(messages) < n:
        messages += simulate(n // 8, seed=7 + len(messages), start=start)
    events = [normalize(m, received_at=received, source="web") for m in messages[:n]]
    records = [encode_events(events[i:i + 20]) for i in range(0, len(events), 20)]
    return [((murmur2(e.user_key.encode()) & 0x7FFFFFFF) % PARTITIONS, e) for r in records for e in decode_record(r)]


def windows() -> None:
    from spoor.stream_processors.metric_windows import MetricWindows
    events, batch = flood_events(), 5_000
    times = []
    for _run in range(3):
        folded, rows = MetricWindows(), []
        began = time.process_time()
        for start in range(0, len(events), batch):
            if hasattr(folded, "add_events"):
                folded.add_events(events[start:start + batch])
            else:  # trees before the per-batch fold
                for partition, event in events[start:start + batch]:
                    folded.add_event(partition, event)
            rows += folded.close_due()
        times.append((time.process_time() - began) / len(events) * 1e6)
        rows += folded.close_due(idle=set(range(PARTITIONS)))
    digest = hashlib.sha256(json.dumps([sorted((k, str(v)) for k, v in r.items()) for r in rows]).encode())
    print(f"windows_us_per_event: {statistics.median(times):.2f} (runs {', '.join(f'{t:.2f}' for t in times)}); "
          f"rows {len(rows)}, late {folded.late_events}, digest {digest.hexdigest()[:16]}")


def changelog() -> None:
    import faust
    from kafka.admin import KafkaAdminClient, NewTopic

    from spoor.settings import Settings
    from spoor.stream_processors.durable_table import DurableTable
    bootstrap = Settings().kafka_bootstrap
    app = faust.App(f"bookkeeping-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="rocksdb://",
                    datadir=tempfile.mkdtemp(prefix="spoor-bookkeeping-"), key_serializer="raw",
                    value_serializer="raw", producer_acks=-1, producer_linger=0.005, producer_max_batch_size=262144)
    table = DurableTable(app, name="p", partitions=PARTITIONS, use_partitioner=True, key_type=bytes,
                         value_type=bytes, options={"driver": "rocksdict"})
    topic = table.changelog_topic.get_topic_name()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    keys = [f"user-7-{i}".encode() for i in range(2500)]

    async def sends() -> list[float]:
        await app.producer.start()
        times = []
        for _send in range(10):
            for key in keys:
                table.on_key_set(key, os.urandom(600).hex().encode())
            began = time.process_time()
            await table.changelog_durable()
            times.append((time.process_time() - began) / len(keys) * 1e6)
        await app.producer.stop()
        return times

    try:
        times = asyncio.run(sends())
    finally:
        admin.delete_topics([topic])
        admin.close()
    print(f"changelog_us_per_record: {statistics.median(times[2:]):.2f} (sends {', '.join(f'{t:.1f}' for t in times)})")


def rocksdb() -> None:
    import rocksdict

    from spoor.stream_processors.app import ROCKSDB_OPTIONS
    from spoor.stream_processors.rocksdb_store import ManifestRollingOptions
    options = {k: v for k, v in ROCKSDB_OPTIONS.items() if k != "driver"}
    keys = [f"user-7-{i}".encode() for i in range(40_000)]
    values = [os.urandom(1500) for _ in keys]
    process: dict[str, list] = {"put": [], "write_batch": []}
    thread: dict[str, list] = {"put": [], "write_batch": []}
    for run in range(6):
        for mode in ("put", "write_batch") if run % 2 else ("write_batch", "put"):
            db = rocksdict.Rdict(tempfile.mkdtemp(prefix="spoor-bookkeeping-"),
                                 options=ManifestRollingOptions(**options, use_rocksdict=True).as_options())
            began, began_thread = time.process_time(), time.thread_time()
            for start in range(0, len(keys), 2500):
                pairs = zip(keys[start:start + 2500], values[start:start + 2500])
                if mode == "put":
                    for key, value in pairs:
                        db.put(key, value)
                else:
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for key, value in pairs:
                        batch.put(key, value)
                    db.write(batch)
            process[mode].append((time.process_time() - began) / len(keys) * 1e6)
            thread[mode].append((time.thread_time() - began_thread) / len(keys) * 1e6)
            db.close()
    for mode in process:
        print(f"rocksdb_{mode}_us_per_key: process {statistics.median(process[mode]):.2f}, "
              f"main thread {statistics.median(thread[mode]):.2f}")


if __name__ == "__main__":
    {"windows": windows, "changelog": changelog, "rocksdb": rocksdb}[sys.argv[2]]()
