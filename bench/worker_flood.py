"""Worker under a flood: figures, not a test. Needs Kafka and PostgreSQL (`deploy/stack.sh infra`).

Unlike bench/worker_drain.py (events posted first, then one worker drains a backlog in batches of
tens of thousands), the workers here run while the collector takes N simulated events, as in
`make bench`'s flood: the batch sizes they see are the flood's. Prints the workers' CPU per event
(from /proc, over the posting and the drain), the CPU of the PostgreSQL backends serving the run's database
(`postgres_cpu_us_per_event`: its sessions found at the start and the end, /proc), and the batch-size
histogram summed over the workers (`spoor_worker_batch_events`). Then, with a tree that has it (migration
0031), the segments runner's fold of the product rows the workers appended, as one fold over the whole
flood: `fold_backend_cpu_us_per_event`. With ``--py-spy PREFIX`` each worker is sampled into PREFIX.<i>
(py-spy's raw format: `.venv/bin/pip install py-spy`). Own ports, topics and database.

    .venv/bin/python bench/worker_flood.py --events 200000 [--workers 2] [--py-spy /tmp/flood]

To run another tree's code (an A/B), start it with that tree's modules first on the path (see
bench/source_tree.py) and pass ``--tree``: its bench/ and processes are used.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--events", type=int, default=200_000)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--py-spy", dest="py_spy", default=None)
parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
args = parser.parse_args()
sys.path.insert(0, str(Path(args.tree).resolve()))
from bench.analytics import ScratchRun, committed, start, stop, wait_healthy  # noqa: E402
from bench.pipeline import make_batches, post_all  # noqa: E402
from bench.worker_drain import process_cpu_seconds, start_workers  # noqa: E402
from spoor.settings import Settings  # noqa: E402


def backend_cpu_seconds(engine) -> dict[int, float]:
    """User + system CPU of each PostgreSQL backend connected to ``engine``'s database but this one."""
    with engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()")).scalars().all()
    cpu = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # gone meanwhile
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu


def fold_cost(database_url: str, n: int) -> None:
    """The runner's fold of what the flood appended, once, with its backend's CPU (/proc/<pid>/schedstat)."""
    try:
        from spoor.storage.interests import fold_product_deltas
    except ImportError:  # a tree from before migration 0031: the workers upserted the product tables
        return
    engine = create_engine(database_url, pool_size=1, max_overflow=0)  # one connection: the fold's is this one
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    before, cpu = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]), time.process_time()
    folded = fold_product_deltas(engine)
    backend = (int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) - before) / 1e9
    engine.dispose()
    print(f"fold: {folded.popularity_deltas:,} popularity and {folded.affinity_deltas:,} affinity delta rows into "
          f"{folded.popularity_rows:,} and {folded.affinity_rows:,} rows in {folded.seconds:.2f} s")
    print(f"fold_backend_cpu_us_per_event: {backend / n * 1e6:.2f}")
    print(f"fold_runner_cpu_us_per_event: {(time.process_time() - cpu) / n * 1e6:.2f}")


BATCH_LINE = re.compile(r'spoor_worker_batch_events_(?:bucket\{le="([^"]+)"\}|(count|sum)) (\S+)')


def batch_histogram(urls: list[str]) -> dict[str, float]:
    summed: dict[str, float] = {}
    for url in urls:
        for line in urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode().splitlines():
            if match := BATCH_LINE.match(line):
                name = match.group(1) or match.group(2)
                summed[name] = summed.get(name, 0.0) + float(match.group(3))
    return summed


def main() -> None:
    bodies, n = make_batches(args.events, seed=7)
    with tempfile.TemporaryDirectory(prefix="spoor-flood-") as tmp:
        work = Path(tmp)
        scratch = ScratchRun(Settings(), work, "flood", {"analytics_enabled": "true"})
        settings, env = scratch.settings, scratch.env
        collector = start("collector", env, work / "collector.log")
        running, urls, spies = [], [], []
        try:
            wait_healthy(collector, f"http://127.0.0.1:{settings.collector_port}/healthz", 60)
            start_workers(args.workers, settings, env, work, running, urls)
            time.sleep(8)  # the group settles (a rebalance after the second worker joins)
            database = create_engine(settings.database_url, pool_size=1, max_overflow=0)
            pg_before = backend_cpu_seconds(database)
            cpu_before = sum(process_cpu_seconds(w.pid) for w in running)
            started = time.perf_counter()
            for index, worker in enumerate(running if args.py_spy else []):
                child = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0]
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", child, "-r", "50", "-f", "raw",
                     "-o", f"{args.py_spy}.{index}", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            post_all(f"http://127.0.0.1:{settings.collector_port}", scratch.key, bodies, 4)
            posted = time.perf_counter() - started
            while sum(committed(url) for url in urls) < n:
                time.sleep(0.25)
            elapsed = time.perf_counter() - started
            cpu = sum(process_cpu_seconds(w.pid) for w in running) - cpu_before
            pg_after = backend_cpu_seconds(database)
            database.dispose()
            pg = sum(seconds - pg_before.get(pid, 0.0) for pid, seconds in pg_after.items())
            for spy in spies:
                spy.send_signal(2)
                spy.wait(30)
            histogram = batch_histogram(urls)
            print(f"collector: {n / posted:,.0f} events/s; end to end: {n / elapsed:,.0f} events/s", flush=True)
            print(f"batches: {histogram.get('count', 0):.0f}, "
                  f"events per batch: {histogram.get('sum', 0) / max(1.0, histogram.get('count', 0)):,.0f}")
            print("batches of at most N events: " + ", ".join(
                f"{le}: {count:.0f}" for le, count in histogram.items() if le not in ("count", "sum")))
            print(f"worker_cpu_us_per_event: {cpu / n * 1e6:.1f}")
            print(f"postgres_cpu_us_per_event: {pg / n * 1e6:.1f} ({len(pg_after)} backends)", flush=True)
            fold_cost(settings.database_url, n)
        finally:
            for worker in running:
                stop(worker)
            if collector.poll() is None:
                stop(collector)
            scratch.drop()


if __name__ == "__main__":
    main()
