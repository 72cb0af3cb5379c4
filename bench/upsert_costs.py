"""What each upserted row costs PostgreSQL under a flood: figures, not a test. Needs Kafka and a PostgreSQL
cluster of the caller's own on this machine (its CPU is read from /proc, its WAL from pg_stat_wal: another
helper's or test's writes on the same cluster would count too).

As bench/worker_flood.py, the workers run while the collector takes N simulated events (own database, topics
and ports). Over the flood and the drain it measures the PostgreSQL cluster's process tree (postmaster and
every backend, autovacuum and WAL writer included: bench/proc_cpu.py) and the WAL written (pg_stat_wal), and at
the end, per table the workers write (partitions summed into their table): rows inserted and updated, the
share of updates that were HOT (no new index entries), dead rows, autovacuum and autoanalyze runs, and each
index's scans (an index nobody read in the run shows 0: grep the code before calling it unused).

    SPOOR_DATABASE_URL=postgresql+psycopg2://spoor:spoor@127.0.0.1:26033/spoor \\
      .venv/bin/python bench/upsert_costs.py --events 150000 --pg-pid-file /var/tmp/spoor-h32/pgdata/postmaster.pid

For an A/B of two trees, run it with the other tree's venv and ``--tree`` (as bench/worker_flood.py): that
tree's migrations, bench/ and processes are used; ``--label`` names the run in the output. ``--variant-sql``
runs on the run's database after its migrations (``{sessions}`` and ``{session_journeys}``: each of the table's
partitions in turn), e.g. ``--variant-sql "ALTER TABLE {sessions} SET (fillfactor = 50)"``.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--events", type=int, default=150_000)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--pg-pid-file", required=True, help="the cluster's postmaster.pid")
parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
parser.add_argument("--label", default="")
parser.add_argument("--variant-sql", default="", help="statements (separated by ;) run on the run's database first")
parser.add_argument("--json", default="", help="append the run's figures as one JSON line to this file")
args = parser.parse_args()
sys.path.insert(0, str(Path(args.tree).resolve()))
from sqlalchemy import create_engine, text  # noqa: E402

from bench.analytics import ScratchRun, committed, start, stop, wait_healthy  # noqa: E402
from bench.pipeline import make_batches, post_all  # noqa: E402
from bench.proc_cpu import process_table, tree_cpu  # noqa: E402
from bench.worker_drain import process_cpu_seconds, start_workers  # noqa: E402
from spoor.settings import Settings  # noqa: E402

TABLES = ("events", "user_profiles", "user_activity", "sessions", "user_interests",
          "behaviour_triggers", "product_popularity", "product_affinity")
TABLE_STATS = """
SELECT coalesce(pg_partition_root(relid), relid)::regclass::text AS t, sum(n_tup_ins), sum(n_tup_upd),
       sum(n_tup_hot_upd), sum(n_dead_tup), sum(n_live_tup), sum(autovacuum_count), sum(autoanalyze_count),
       sum(pg_relation_size(relid))
FROM pg_stat_user_tables GROUP BY 1"""
INDEX_STATS = """
SELECT coalesce(pg_partition_root(relid), relid)::regclass::text AS t,
       coalesce(pg_partition_root(indexrelid), indexrelid)::regclass::text AS i, sum(idx_scan),
       sum(pg_relation_size(indexrelid))
FROM pg_stat_user_indexes GROUP BY 1, 2 ORDER BY 1, 2"""
WAL = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"


def per_partition(conn, statement: str) -> list[str]:
    """``statement`` once per partition of the partitioned table named in braces (one table a statement)."""
    for table in ("sessions", "session_journeys"):
        if "{" + table + "}" in statement:
            partitions = conn.execute(text("SELECT inhrelid::regclass::text FROM pg_inherits "
                                           "WHERE inhparent = CAST(:t AS regclass)"), {"t": table}).scalars()
            return [statement.replace("{" + table + "}", p) for p in partitions]
    return [statement]


def postgres_cpu(pid: int) -> float:
    return tree_cpu([pid], process_table())


def main() -> None:
    pg_pid = int(Path(args.pg_pid_file).read_text().split()[0])
    bodies, n = make_batches(args.events, seed=7)
    with tempfile.TemporaryDirectory(prefix="spoor-upserts-") as tmp:
        work = Path(tmp)
        scratch = ScratchRun(Settings(), work, "upserts", {"analytics_enabled": "true"})
        settings, env = scratch.settings, scratch.env
        engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        with engine.begin() as conn:
            for statement in filter(str.strip, args.variant_sql.split(";")):
                for one in per_partition(conn, statement):
                    conn.execute(text(one))
        collector = start("collector", env, work / "collector.log")
        running, urls = [], []
        try:
            wait_healthy(collector, f"http://127.0.0.1:{settings.collector_port}/healthz", 60)
            start_workers(args.workers, settings, env, work, running, urls)
            time.sleep(8)  # the group settles
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_stat_reset()"))
                wal_before = conn.execute(text(WAL)).one()
            load = os.getloadavg()
            cpu_before = sum(process_cpu_seconds(w.pid) for w in running), postgres_cpu(pg_pid)
            started = time.perf_counter()
            post_all(f"http://127.0.0.1:{settings.collector_port}", scratch.key, bodies, 4)
            while sum(committed(url) for url in urls) < n:
                time.sleep(0.25)
            elapsed = time.perf_counter() - started
            workers_cpu = sum(process_cpu_seconds(w.pid) for w in running) - cpu_before[0]
            pg_cpu = postgres_cpu(pg_pid) - cpu_before[1]
            time.sleep(3)  # backends report their table counters when idle (at most once a second)
            with engine.connect() as conn:
                wal_after = conn.execute(text(WAL)).one()
                tables = {row[0]: [int(v or 0) for v in row[1:]] for row in conn.execute(text(TABLE_STATS))}
                indexes = [(t, i, int(scans or 0), int(size)) for t, i, scans, size in conn.execute(text(INDEX_STATS))
                           if t in TABLES]
            wal = [int(a - b) for a, b in zip(wal_after, wal_before)]
            result = {"label": args.label, "events": n, "load": load, "elapsed_s": elapsed,
                      "postgres_cpu_us_per_event": pg_cpu / n * 1e6, "worker_cpu_us_per_event": workers_cpu / n * 1e6,
                      "wal_bytes_per_event": wal[2] / n, "wal_records_per_event": wal[0] / n,
                      "wal_fpi_per_event": wal[1] / n, "tables": {}, "indexes": indexes}
            print(f"[{args.label}] {n} events in {elapsed:.1f} s, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            print(f"postgres_cpu_us_per_event: {result['postgres_cpu_us_per_event']:.1f}")
            print(f"worker_cpu_us_per_event: {result['worker_cpu_us_per_event']:.1f}")
            print(f"wal_bytes_per_event: {wal[2] / n:.0f} (records {wal[0] / n:.2f}, full-page images {wal[1] / n:.3f})")
            print(f"{'table':20} {'ins':>8} {'upd':>8} {'hot':>6} {'dead':>8} {'live':>8} {'vac':>4} {'anl':>4} {'MiB':>6}")
            for table in TABLES:
                ins, upd, hot, dead, live, vac, anl, size = tables.get(table, [0] * 8)
                result["tables"][table] = {"ins": ins, "upd": upd, "hot": hot / upd if upd else None, "dead": dead,
                                           "live": live, "autovacuum": vac, "autoanalyze": anl, "bytes": size}
                print(f"{table:20} {ins:8} {upd:8} {hot / upd if upd else 0:6.1%} {dead:8} {live:8} {vac:4} {anl:4} "
                      f"{size / 2**20:6.1f}")
            print("index scans in the run (index: scans, size MiB):")
            for table, index, scans, size in indexes:
                print(f"  {table:20} {index:40} {scans:9} {size / 2**20:7.1f}")
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(result) + "\n")
        finally:
            engine.dispose()
            for worker in running:
                stop(worker)
            if collector.poll() is None:
                stop(collector)
            scratch.drop()


if __name__ == "__main__":
    main()
