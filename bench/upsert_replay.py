"""The worker's upserts replayed into two databases, A against B, with what PostgreSQL pays for them later:
figures, not a test. Needs a PostgreSQL cluster of the caller's own on this machine (backend CPU from /proc,
WAL from the cluster's insert position: other writers on the cluster would count too).

The batches are bench/worker_writes.py's (simulated events folded offline as the worker folds them), written
to two fresh databases with ``StreamWriter``, alternating which goes first. Per side and event: the writing
backend's CPU, the WAL the writes inserted (``pg_current_wal_insert_lsn`` before and after each batch, read on
another connection), then the tables' updates, HOT share, dead rows and size, and a ``VACUUM`` of the written
tables at the end (its backend CPU and WAL: the part of the rows' cost autovacuum pays later).

    SPOOR_DATABASE_URL=postgresql+psycopg2://spoor:spoor@127.0.0.1:26033/spoor \\
      .venv/bin/python bench/upsert_replay.py --a-commit HEAD --redeliver
    ... --variant-sql "ALTER TABLE user_profiles SET (fillfactor = 50)"   # on B only, after its migrations

``--a-commit REV``: A writes with the writers of REV (bench/worker_writes.py's ``writer_at``), B with this tree's.
``--a-sql``: statements run on A after its migrations (e.g. to undo one of this tree's migrations there).
``--redeliver``: every batch is written twice. ``--interests``: both write the batches' interest rows too.
"""

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.worker_writes import backend_cpu_ns, captured_batches, writer_at  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage.migrate import upgrade  # noqa: E402
from spoor.storage.writers import StreamWriter  # noqa: E402
from spoor.stream_processors.interests import DAY_S, interest_batch  # noqa: E402
from tests.support.scratch_db import ScratchDatabase  # noqa: E402

TABLES = ("user_profiles", "user_activity", "sessions", "user_interests", "events")
STATS = """
SELECT coalesce(pg_partition_root(relid), relid)::regclass::text AS t, sum(n_tup_upd), sum(n_tup_hot_upd),
       sum(n_dead_tup), sum(pg_relation_size(relid)), sum(pg_indexes_size(relid))
FROM pg_stat_user_tables GROUP BY 1"""


def lsn(monitor) -> int:
    return int(monitor.execute(text("SELECT pg_current_wal_insert_lsn() - '0/0'")).scalar_one())


def run_sql(engine, statements: str) -> None:
    with engine.begin() as conn:
        for statement in filter(str.strip, statements.split(";")):
            conn.execute(text(statement))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12_500, help="simulated shoppers (~7 events each)")
    parser.add_argument("--batch-events", type=int, default=3000)
    parser.add_argument("--variant-sql", default="", help="statements (separated by ;) run on database B")
    parser.add_argument("--a-sql", default="", help="statements (separated by ;) run on database A")
    parser.add_argument("--a-commit", default="")
    parser.add_argument("--redeliver", action="store_true")
    parser.add_argument("--interests", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    batches, n = captured_batches(settings, args.users, args.batch_events)
    print(f"{n} events in {len(batches)} batches", flush=True)
    half_lives = settings.interest_half_life_days * DAY_S, settings.trending_half_life_days * DAY_S
    recent = {}
    interests = [interest_batch(events, *half_lives, recent=recent) for _rows, events, _derived in batches]
    run = uuid.uuid4().hex[:8]
    databases = [ScratchDatabase(settings.database_url, f"spoor_replay_{run}_{name}") for name in "ab"]
    engines = []
    monitor_engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        for database in databases:
            upgrade(database.url)
            engines.append(create_engine(database.url, pool_size=1, max_overflow=0))
        run_sql(engines[0], args.a_sql)
        run_sql(engines[1], args.variant_sql)
        pids = []
        for engine in engines:
            with engine.connect() as conn:
                pids.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                conn.execute(text("SELECT pg_stat_reset()"))
        writers = [writer_at(args.a_commit)(engines[0]) if args.a_commit else StreamWriter(engines[0]),
                   StreamWriter(engines[1])]
        cpu, wal = [0.0, 0.0], [0, 0]
        per_batch = [[], []]  # (backend us, WAL bytes) per event of each batch
        with monitor_engine.connect() as monitor:
            for index, (rows, events, derived) in enumerate(batches):
                for which in ((0, 1) if index % 2 == 0 else (1, 0)):
                    options = {"interests": interests[index]} if args.interests and events else {}
                    for _ in range(2 if args.redeliver else 1):
                        lsn_before, backend = lsn(monitor), backend_cpu_ns(pids[which])
                        writers[which].write_batch(rows, events, derived, **options)
                        spent, written = (backend_cpu_ns(pids[which]) - backend) / 1e9, lsn(monitor) - lsn_before
                        cpu[which] += spent
                        wal[which] += written
                        per_batch[which].append((spent / max(len(events), 1) * 1e6, written / max(len(events), 1)))
            time.sleep(11)  # an idle backend sends its table counters to the statistics within 10 s
            tables, vacuum = [], []
            for engine, pid in zip(engines, pids):
                with engine.connect() as conn:
                    tables.append({row[0]: [int(v or 0) for v in row[1:]] for row in conn.execute(text(STATS))})
                    conn.execute(text("COMMIT"))
                    lsn_before, backend = lsn(monitor), backend_cpu_ns(pid)
                    for table in TABLES:
                        conn.execute(text(f"VACUUM {table}"))
                    vacuum.append(((backend_cpu_ns(pid) - backend) / 1e9, lsn(monitor) - lsn_before))
    finally:
        for engine in engines:
            engine.dispose()
        monitor_engine.dispose()
        for database in databases:
            database.drop()
    writes = n * (2 if args.redeliver else 1)
    for i, name in enumerate("ab"):
        print(f"{name}_backend_cpu_us_per_event: {cpu[i] / writes * 1e6:.1f} "
              f"(median of batches {statistics.median(b[0] for b in per_batch[i]):.1f})")
        print(f"{name}_wal_bytes_per_event: {wal[i] / writes:.0f} "
              f"(median of batches {statistics.median(b[1] for b in per_batch[i]):.0f})")
        print(f"{name}_vacuum_after: backend {vacuum[i][0] / writes * 1e6:.1f} us, WAL {vacuum[i][1] / writes:.0f} "
              "bytes per event")
    print(f"b_vs_a_backend_cpu: {cpu[1] / cpu[0]:.3f} (medians "
          f"{statistics.median(b[0] for b in per_batch[1]) / statistics.median(b[0] for b in per_batch[0]):.3f})")
    print(f"b_vs_a_wal: {wal[1] / wal[0]:.3f}")
    print(f"{'table':18} {'A upd':>8} {'A hot':>6} {'A dead':>7} {'A MiB':>6} {'A idx':>6} "
          f"{'B upd':>8} {'B hot':>6} {'B dead':>7} {'B MiB':>6} {'B idx':>6}")
    for table in TABLES:
        cells = []
        for side in tables:
            upd, hot, dead, size, index_size = side.get(table, [0] * 5)
            cells.append(f"{upd:8} {hot / upd if upd else 0:6.1%} {dead:7} {size / 2**20:6.1f} {index_size / 2**20:6.1f}")
        print(f"{table:18} {' '.join(cells)}")


if __name__ == "__main__":
    main()
