"""Worker drain benchmark: figures, not a test. Needs Kafka and PostgreSQL (`deploy/stack.sh infra`).

Isolates the Faust worker, the pipeline's bottleneck: N simulated events are first posted through a
collector into fresh topics (no worker running), then a worker with a fresh consumer group and a fresh
database starts and the time from its first committed batch to the last is measured, with the CPU
seconds it used. Own ports, topics and database: it does not touch a running `make up` stack.
Repeats ``--runs`` times and prints the median.

    .venv/bin/python bench/worker_drain.py --events 200000 [--runs 3] [--analytics true] [--workers 1]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.analytics import ScratchRun, committed, free_port, start, stop, wait_healthy  # noqa: E402
from bench.pipeline import make_batches, post_all  # noqa: E402
from spoor.settings import Settings  # noqa: E402


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that were waited for (the supervisor's worker)."""
    total = 0.0
    pids = [pid] + Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def start_workers(count: int, settings: Settings, env: dict, work: Path, running: list, urls: list) -> None:
    """Start ``count`` workers, each with its own web port and state directory, and wait until each is
    healthy; each is appended to ``running`` (and its URL to ``urls``) as it starts, so a caller's
    ``finally`` stops those started before a failure."""
    for index in range(count):
        port = settings.worker_web_port if index == 0 else free_port()
        running.append(start("worker", {**env, "SPOOR_WORKER_WEB_PORT": str(port),
                                        "SPOOR_WORKER_DATA_DIR": f"{settings.worker_data_dir}-{index}"},
                             work / f"worker-{index}.log"))
        urls.append(f"http://127.0.0.1:{port}")
    for worker, url in zip(running, urls):
        wait_healthy(worker, f"{url}/healthz", 120)


def drain_once(base: Settings, bodies: list, n: int, analytics: str, workers: int, work: Path) -> tuple[float, float]:
    scratch = ScratchRun(base, work, "drain", {"analytics_enabled": analytics})
    settings, key, env = scratch.settings, scratch.key, scratch.env
    collector = start("collector", env, work / "collector.log")
    running, urls = [], []
    try:
        wait_healthy(collector, f"http://127.0.0.1:{settings.collector_port}/healthz", 60)
        post_all(f"http://127.0.0.1:{settings.collector_port}", key, bodies, 4)
        stop(collector)
        start_workers(workers, settings, env, work, running, urls)

        def total() -> int:
            return sum(committed(url) for url in urls)

        while total() == 0:
            time.sleep(0.05)
        started, cpu_before = time.perf_counter(), sum(process_cpu_seconds(w.pid) for w in running)
        first = total()
        while (done := total()) < n:
            time.sleep(0.5)
        if done == first:
            sys.exit(f"all {n} events came in the first batch: nothing to time (use --events 50000 or more)")
        elapsed = time.perf_counter() - started
        cpu = sum(process_cpu_seconds(w.pid) for w in running) - cpu_before
        return (done - first) / elapsed, cpu / (done - first) * 1e6
    finally:
        for worker in running:
            stop(worker)
        if collector.poll() is None:
            stop(collector)
        scratch.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--analytics", default="true")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    base = Settings()
    bodies, n = make_batches(args.events, seed=7)
    rates, costs = [], []
    with tempfile.TemporaryDirectory(prefix="spoor-drain-") as tmp:
        for index in range(args.runs):
            rate, us_per_event = drain_once(base, bodies, n, args.analytics, args.workers, Path(tmp))
            rates.append(rate)
            costs.append(us_per_event)
            print(f"run {index + 1}: {rate:,.0f} events/s, {us_per_event:.0f} worker CPU us/event", flush=True)
    print(f"worker_drain_events_per_s: {statistics.median(rates):.0f}")
    print(f"worker_cpu_us_per_event: {statistics.median(costs):.0f}")


if __name__ == "__main__":
    main()
