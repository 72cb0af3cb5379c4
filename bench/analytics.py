"""Behaviour analytics benchmark: figures, not a test. Needs Kafka and PostgreSQL (`deploy/stack.sh infra`).

In one run, for each worker configuration, on fresh topics and a fresh database (own ports, own
consumer group: it does not touch a running `make up` stack):
- foundation: the foundation pipeline alone (in-memory Faust table, analytics off);
- analytics: sessions, rolling windows and triggers on, RocksDB store (rocksdict);
the same N simulated events are posted through a collector (batches of 100, 4 connections), and
end-to-end events/s is measured until the worker's committed-event counter reaches N. Then:
state size (RocksDB directory, changelog bytes), the worker's resident memory, and recovery time
after a restart (SIGTERM, so the worker leaves its group at once, then the time from the new
process's start until its /healthz is 200, i.e. table recovery done),
with the RocksDB directory kept (a restarted worker) and wiped (a new machine: full changelog replay).
Ends with `name: value` lines.

    .venv/bin/python bench/analytics.py --events 200000
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pipeline import make_batches, persisted_events, post_all  # noqa: E402
from spoor.settings import Settings, environment  # noqa: E402
from spoor.storage.migrate import upgrade  # noqa: E402
from spoor.storage.write_keys import create_key  # noqa: E402
from spoor.topics import create_topics  # noqa: E402
from tests.support.scratch_db import ScratchDatabase

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "foundation": {"worker_store": "memory://", "analytics_enabled": "false"},
    "analytics": {"worker_store": "rocksdb://", "analytics_enabled": "true"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(process: subprocess.Popen, url: str, timeout: float) -> float:
    started = time.perf_counter()
    while not healthy(url):
        if process.poll() is not None:
            sys.exit(f"{url}: process exited with {process.returncode}")
        if time.perf_counter() - started > timeout:
            sys.exit(f"{url} not healthy after {timeout}s")
        time.sleep(0.1)
    return time.perf_counter() - started


def start(command: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spoor.cli", command], cwd=REPO, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def committed(worker_url: str) -> int:
    """The worker's committed-event counter; 0 while it is too busy to answer."""
    try:
        return persisted_events(worker_url)
    except OSError:
        return 0


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # `spoor worker` passes it on; the worker leaves its group
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def worker_rss_mib(supervisor: subprocess.Popen) -> float:
    """Resident memory of the worker process (the supervisor's child)."""
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text().split()
    for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def changelog_mib(settings: Settings, app_id: str) -> float:
    """Bytes in the table's changelog topic (every record, before compaction)."""
    topic = f"{app_id}-user-profiles-changelog"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    size = 0
    while any(consumer.position(tp) < ends[tp] for tp in parts):
        for records in consumer.poll(timeout_ms=1000, max_records=5000).values():
            size += sum(len(r.value or b"") + len(r.key or b"") for r in records)
    consumer.close()
    return size / 2**20


class ScratchRun:
    """Fresh database, topics, ports, consumer group and write key for one benchmark run (a running
    `make up` stack is never touched); ``env`` starts Spoor processes on them; ``drop`` removes them."""

    def __init__(self, base: Settings, work: Path, prefix: str, overrides: dict):
        self.run = uuid.uuid4().hex[:8]
        self.database = ScratchDatabase(base.database_url, f"spoor_{prefix}_{self.run}")
        self.settings = base.model_copy(update={
            "database_url": self.database.url,
            "events_topic": f"spoor.{prefix}-{self.run}.events",
            "dead_letter_topic": f"spoor.{prefix}-{self.run}.events.dlq",
            "triggers_topic": f"spoor.{prefix}-{self.run}.triggers", "worker_app_id": f"spoor-{prefix}-{self.run}",
            "collector_port": free_port(), "worker_web_port": free_port(),
            "worker_data_dir": str(work / f"faust-{self.run}"),
        })
        upgrade(self.settings.database_url)
        create_topics(self.settings)
        self.key = create_key(create_engine(self.settings.database_url), "bench", "web")
        self.env = dict(os.environ)
        self.env.update(environment(self.settings))
        self.env.update({f"SPOOR_{k.upper()}": v for k, v in overrides.items()})

    def drop(self) -> None:
        from kafka.admin import KafkaAdminClient
        self.database.drop()
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        admin.delete_topics([t for t in admin.list_topics() if self.run in t])
        admin.close()


def run_config(name: str, overrides: dict, base: Settings, bodies: list, n: int, threads: int, work: Path) -> dict:
    scratch = ScratchRun(base, work, "bench", overrides)
    settings, key, env = scratch.settings, scratch.key, scratch.env
    worker_url = f"http://127.0.0.1:{settings.worker_web_port}"
    collector_url = f"http://127.0.0.1:{settings.collector_port}"
    collector = start("collector", env, work / f"{name}-collector.log")
    worker = start("worker", env, work / f"{name}-worker.log")
    result = {}
    try:
        wait_healthy(collector, f"{collector_url}/healthz", 60)
        wait_healthy(worker, f"{worker_url}/healthz", 120)
        print(f"[{name}] posting {n} events ...", flush=True)
        started = time.perf_counter()
        post_all(collector_url, key, bodies, threads)
        while committed(worker_url) < n:
            time.sleep(0.2)
        result["end_to_end_events_per_s"] = n / (time.perf_counter() - started)
        print(f"[{name}] end to end: {result['end_to_end_events_per_s']:,.0f} events/s", flush=True)
        result["worker_rss_mib"] = worker_rss_mib(worker)
        with create_engine(settings.database_url).connect() as conn:
            result["users"] = conn.execute(text("SELECT count(*) FROM user_profiles")).scalar()
            if overrides["analytics_enabled"] == "true":
                result["sessions"] = conn.execute(text("SELECT count(*) FROM sessions")).scalar()
                result["triggers"] = conn.execute(text("SELECT count(*) FROM behaviour_triggers")).scalar()
        result["changelog_mib"] = changelog_mib(settings, settings.worker_app_id)

        # Restart: stop, then time until the table is recovered (the worker's /healthz is 200).
        stop(worker)
        data_dir = Path(settings.worker_data_dir)
        result["state_dir_mib"] = dir_mib(data_dir) if data_dir.exists() else 0.0
        worker = start("worker", env, work / f"{name}-worker.log")
        result["recovery_s"] = wait_healthy(worker, f"{worker_url}/healthz", 1800)
        print(f"[{name}] recovery after a restart: {result['recovery_s']:.1f}s", flush=True)
        if overrides["worker_store"].startswith("rocksdb"):
            stop(worker)
            shutil.rmtree(data_dir)
            worker = start("worker", env, work / f"{name}-worker.log")
            result["recovery_empty_dir_s"] = wait_healthy(worker, f"{worker_url}/healthz", 1800)
            print(f"[{name}] recovery on an empty data dir: {result['recovery_empty_dir_s']:.1f}s", flush=True)
    finally:
        for process in (worker, collector):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        scratch.drop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--configs", default="foundation,analytics")
    args = parser.parse_args()
    base = Settings()
    print(f"preparing {args.events} simulated events ...", flush=True)
    bodies, n = make_batches(args.events, seed=int(time.time()))
    results = {}
    work = Path(tempfile.mkdtemp(prefix="spoor-bench-"))
    print(f"logs and state under {work}", flush=True)
    for name in args.configs.split(","):
        results[name] = run_config(name, CONFIGS[name], base, bodies, n, args.threads, work)
    for state in work.glob("faust-*"):
        shutil.rmtree(state)
    print()
    print(f"events: {n}")
    for name, result in results.items():
        for key, value in result.items():
            print(f"{name}_{key}: {round(value, 2) if isinstance(value, float) else value}")
    if {"foundation", "analytics"} <= set(results):
        ratio = results["analytics"]["end_to_end_events_per_s"] / results["foundation"]["end_to_end_events_per_s"]
        print(f"analytics_vs_foundation_end_to_end: {ratio:.3f}")


if __name__ == "__main__":
    main()
