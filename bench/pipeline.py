"""Pipeline benchmark: figures, not a test. Run on a stack started by `make up` (`make bench N=...`).

Phases, in one run:
1. Kafka's own ProducerPerformance / ConsumerPerformance on a scratch topic: the ceiling.
2. Flood: N simulated events through the collector as fast as it takes them (batches of 100);
   collector events/s, and end-to-end events/s until the last aggregate is in PostgreSQL.
3. Paced: events at a fixed rate (default 2,000/s); freshness p50/p99 from the collector's
   receipt to the transaction that made the aggregate visible in PostgreSQL.
CPU per event (``cpu_us_per_event``): the stack's processes' CPU (bench/proc_cpu.py, from /proc, found
through the pid files under SPOOR_RUN_DIR) from just before the flood's first post until its last event is in
PostgreSQL and the segments and campaigns runners have caught up with it (bench/catch_up.py; bounded by
--catch-up-timeout), plus the same over the paced phase, divided by the events of both; in all and per kind
of process. ``cpu_us_per_event_until_stored``: the same until the last event is stored only (the figure
before the catch-up was counted, for comparison with the performance log). On a shared Kafka or
PostgreSQL, their figures include what others make them do.
Ends with `name: value` lines for machines.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

from spoor.cli.collector_client import CollectorClient
from spoor.cli.simulate import simulate
from spoor.settings import Settings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench.proc_cpu when run as a script
from bench.catch_up import Runners, TriggerLag  # noqa: E402
from bench.proc_cpu import KINDS, StackCpu, cpu_delta  # noqa: E402

BATCH = 100


def kafka_classpath() -> str:
    out = subprocess.run([str(REPO / "deploy/kafka.sh"), "fetch"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] + "/*"


def kafka_tool(classpath: str, tool: str, *args: str) -> str:
    cmd = ["java", "-Xmx512m", "-cp", classpath, f"org.apache.kafka.tools.{tool}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def kafka_ceiling(settings: Settings, records: int, record_size: int) -> tuple[float, float]:
    from kafka.admin import KafkaAdminClient, NewTopic
    topic = f"spoor.bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    admin.create_topics([NewTopic(topic, settings.topic_partitions, 1)])
    try:
        classpath = kafka_classpath()
        produced = kafka_tool(classpath, "ProducerPerformance", "--topic", topic, "--num-records", str(records),
                              "--record-size", str(record_size), "--throughput", "-1", "--producer-props",
                              f"bootstrap.servers={settings.kafka_bootstrap}", "acks=all", "linger.ms=5")
        producer_rate = float(re.findall(r"([\d.]+) records/sec", produced)[-1])
        consumed = kafka_tool(classpath, "ConsumerPerformance", "--bootstrap-server", settings.kafka_bootstrap,
                              "--topic", topic, "--messages", str(records), "--timeout", "60000")
        header, values = [line for line in consumed.splitlines() if line.strip()][-2:]
        row = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in values.split(",")]))
        consumer_rate = float(row["nMsg.sec"])
    finally:
        admin.delete_topics([topic])
        admin.close()
    return producer_rate, consumer_rate


def make_batches(events: int, seed: int, run_id: str | None = None) -> tuple[list[bytes], int]:
    """Batches of simulated events; with ``run_id`` their ids are it + a counter (``persisted_in_database``)."""
    messages: list[dict] = []
    users = max(1, events // 8)
    while len(messages) < events:
        messages += simulate(users, seed=seed + len(messages))
    messages = messages[:events]
    for number, message in enumerate(messages if run_id else []):
        message["messageId"] = f"{run_id}{number:09d}"
    return [orjson.dumps({"batch": messages[i:i + BATCH]}) for i in range(0, len(messages), BATCH)], len(messages)


def post_all(url: str, key: str, bodies: list[bytes], threads: int, rate_per_s: float | None = None) -> float:
    """Post pre-serialised batches from several connections; returns elapsed seconds."""
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    errors: list[str] = []
    started = time.perf_counter()

    def sender() -> None:
        client = CollectorClient(url, key)
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            if rate_per_s:  # paced: batch i is due at i * BATCH / rate
                delay = started + index * BATCH / rate_per_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            status, body = client.send_batch_json(bodies[index], retries=20)
            if status != 200:
                errors.append(f"{status}: {body}")
                break
        client.close()

    workers = [threading.Thread(target=sender) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        sys.exit(f"collector refused a batch: {errors[0]}")
    return time.perf_counter() - started


def persisted_events(worker_url: str) -> int:
    """Events a worker has committed to PostgreSQL (its counter moves after each commit)."""
    with urllib.request.urlopen(f"{worker_url}/metrics", timeout=10) as response:
        text_ = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text_.splitlines()
                   if line.startswith("spoor_worker_events_total{")
                   and ('outcome="applied"' in line or 'outcome="duplicate"' in line)))


def all_persisted(worker_urls: list[str]) -> int | None:
    """The workers' counters added up; None when a worker does not answer (busy, or restarting)."""
    try:
        return sum(persisted_events(url) for url in worker_urls)
    except OSError:
        return None


def persisted_in_database(engine, run_id: str) -> int:
    """This run's events in PostgreSQL: an index range over their ids (letters and digits only, so
    the range holds exactly them in any collation)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events WHERE event_id BETWEEN :low AND :high"),
                            {"low": f"{run_id}000000000", "high": f"{run_id}999999999"}).scalar()


def wait_persisted(engine, worker_urls: list[str], run_id: str, counters_before: int | None, expected: int,
                   timeout: float) -> float:
    """Wait until all ``expected`` events of the run are in PostgreSQL; returns the time they were.

    The workers' counters are cheap to read, so they are watched closely, and PostgreSQL is asked
    when they add up (or every 10 s: a worker that restarted starts its counter again at zero;
    the count takes ~0.2 s of PostgreSQL for 200,000 events, so not more often)."""
    deadline = time.monotonic() + timeout
    last_count = last_report = float("-inf")
    while True:
        counted = all_persisted(worker_urls)
        if counted is not None and counters_before is not None and counted < counters_before:
            print("  ... a worker restarted (its counter went back): counting in PostgreSQL every 10 s", flush=True)
            counters_before = None
        counters_done = None not in (counted, counters_before) and counted - counters_before >= expected
        if time.monotonic() - last_count >= (1 if counters_done else 10):
            stored = persisted_in_database(engine, run_id)
            last_count = time.monotonic()
            if stored >= expected:
                return time.perf_counter()
            if last_count - last_report >= 10:
                print(f"  ... {stored} of {expected} events in PostgreSQL so far", flush=True)
                last_report = last_count
        if time.monotonic() > deadline:
            sys.exit(f"only {persisted_in_database(engine, run_id)}/{expected} events reached PostgreSQL "
                     f"in {timeout}s")
        time.sleep(0.25)


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--paced-rate", type=float, default=2000)
    parser.add_argument("--paced-seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SPOOR_WORKERS", "2")),
                        help=f"worker processes `make up` started (web ports {settings.worker_web_port}, "
                             f"{settings.worker_web_port + 1}, ...)")
    parser.add_argument("--write-key", default=settings.demo_write_key,
                        help="default: the demo write key `make up` creates (SPOOR_DEMO_WRITE_KEY)")
    parser.add_argument("--run-dir", default=os.environ.get("SPOOR_RUN_DIR", "/var/tmp/spoor"),
                        help="the stack's SPOOR_RUN_DIR, where its pid files are (for the CPU figures)")
    parser.add_argument("--catch-up-timeout", type=float, default=None,
                        help="longest wait for the runners to catch up with a phase, in seconds "
                             "(default: max(600, the phase's events / 250))")
    parser.add_argument("--catch-up-by", choices=("state", "cpu"), default="state",
                        help="how a runner is judged caught up: its cursors, lag and turns where the commit has "
                             "them (state), else its CPU; or by CPU only (cpu)")
    parser.add_argument("--idle-cores", type=float, default=None,
                        help="CPU judge: PostgreSQL + those runners under this many cores is idle (default: "
                             "twice their rate measured before the flood + 0.05, at least 0.15)")
    parser.add_argument("--idle-window", type=float, default=30.0,
                        help="CPU judge: seconds the rate must stay under --idle-cores")
    args = parser.parse_args()
    stack_cpu = StackCpu(args.run_dir)
    url = f"http://{settings.collector_host}:{settings.collector_port}"
    engine = create_engine(settings.database_url)

    def trigger_lag() -> TriggerLag | None:
        try:
            return TriggerLag(settings.kafka_bootstrap, f"{settings.worker_app_id}-campaign-triggers",
                              settings.triggers_topic)
        except Exception as err:  # noqa: BLE001 - then the campaigns runner is judged by its CPU
            print(f"  (the triggers topic's lag cannot be read: {err})", flush=True)
            return None
    runners = Runners(engine, stack_cpu, f"http://127.0.0.1:{settings.campaigns_web_port}", trigger_lag,
                      by=args.catch_up_by, window_s=args.idle_window, max_cores=args.idle_cores)

    def catch_up(phase: str, ids: str, stored_at: float, events: int):
        timeout = args.catch_up_timeout or max(600.0, events / 250)
        caught = runners.wait((f"{ids}000000000", f"{ids}999999999"), stored_at, timeout)
        if caught.timed_out:
            print(f"  the runners had NOT caught up with the {phase} {caught.seconds:.0f} s after its last event "
                  f"was stored (timed out, --catch-up-timeout {timeout:.0f}): CPU counted until then", flush=True)
        else:
            print(f"  the runners caught up with the {phase} {caught.seconds:.1f} s after its last event was "
                  f"stored", flush=True)
        for line in caught.how:
            print(f"    {line}", flush=True)
        return caught
    worker_urls = [f"http://127.0.0.1:{settings.worker_web_port + i}" for i in range(args.workers)]

    print("waiting for the worker to be ready (a probe event through the whole pipeline) ...", flush=True)
    probe = simulate(1, seed=int(time.time()))[:1]
    post_all(url, args.write_key, [orjson.dumps({"batch": probe})], 1)
    deadline = time.monotonic() + 900
    with engine.connect() as conn:  # by primary key: the worker has caught up with everything before it
        while not conn.execute(text("SELECT 1 FROM events WHERE event_id = :id"),
                               {"id": probe[0]["messageId"]}).first():
            if time.monotonic() > deadline:
                sys.exit("the worker did not persist the probe event within 900 s")
            time.sleep(0.5)
            conn.rollback()

    print(f"preparing {args.events} simulated events ...", flush=True)
    run_id = f"bench{uuid.uuid4().hex[:12]}"
    bodies, n = make_batches(args.events, seed=int(time.time()), run_id=f"{run_id}f")
    mean_size = statistics.mean(len(b) for b in bodies) / BATCH

    print("phase 1: Kafka's own producer/consumer performance tools (the ceiling)", flush=True)
    producer_rate, consumer_rate = kafka_ceiling(settings, n, int(mean_size))
    print(f"  ProducerPerformance {producer_rate:,.0f} records/s, ConsumerPerformance {consumer_rate:,.0f} "
          f"records/s ({n} records of {mean_size:.0f} bytes)", flush=True)

    idle_seconds = 15
    idle = runners.measure_idle(idle_seconds)
    idle_total = sum(idle.values())
    print(f"  stack idle (no traffic, {idle_seconds} s): {idle_total * 1000:.0f} ms of CPU per second; "
          + ", ".join(f"{kind} {rate * 1000:.0f}" for kind, rate in idle.items() if rate), flush=True)

    print(f"phase 2: flood, {n} events in batches of {BATCH} from {args.threads} connections", flush=True)
    before = all_persisted(worker_urls)
    cpu_before, driver_before = stack_cpu.sample(), time.process_time()
    started = time.perf_counter()
    post_seconds = post_all(url, args.write_key, bodies, args.threads)
    collector_rate = n / post_seconds
    print(f"  collector accepted {n} events in {post_seconds:.1f}s", flush=True)
    finished = wait_persisted(engine, worker_urls, f"{run_id}f", before, n, timeout=max(300, n / 500))
    flood_cpu_stored = cpu_delta(cpu_before, stack_cpu.sample())
    driver_cpu = time.process_time() - driver_before
    end_to_end_rate = n / (finished - started)
    flood_caught = catch_up("flood", f"{run_id}f", finished, n)
    flood_cpu = cpu_delta(cpu_before, flood_caught.cpu)
    flood_seconds = finished + flood_caught.seconds - started

    paced_n = int(args.paced_rate * args.paced_seconds)
    print(f"phase 3: paced, {paced_n} events at {args.paced_rate:.0f} events/s", flush=True)
    paced_bodies, paced_n = make_batches(paced_n, seed=int(time.time()) + 7, run_id=f"{run_id}p")
    since = datetime.now(timezone.utc)
    before = all_persisted(worker_urls)
    cpu_before, driver_before = stack_cpu.sample(), time.process_time()
    paced_started = time.perf_counter()
    post_all(url, args.write_key, paced_bodies, args.threads, rate_per_s=args.paced_rate)
    paced_stored = wait_persisted(engine, worker_urls, f"{run_id}p", before, paced_n, timeout=300)
    paced_cpu_stored = cpu_delta(cpu_before, stack_cpu.sample())
    driver_cpu += time.process_time() - driver_before
    paced_caught = catch_up("paced phase", f"{run_id}p", paced_stored, paced_n)
    paced_cpu = cpu_delta(cpu_before, paced_caught.cpu)
    paced_seconds = paced_stored + paced_caught.seconds - paced_started
    with engine.connect() as conn:
        p50, p99 = conn.execute(text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM persisted_at - received_at)),"
            "       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM persisted_at - received_at))"
            "  FROM events WHERE received_at >= :t"), {"t": since}).one()

    print()
    print(f"collector:  {collector_rate:10,.0f} events/s  = {collector_rate / producer_rate:.2f} x Kafka producer")
    print(f"end-to-end: {end_to_end_rate:10,.0f} events/s  = {end_to_end_rate / consumer_rate:.2f} x Kafka consumer")
    print(f"freshness at {args.paced_rate:.0f} events/s: p50 {p50:.3f}s, p99 {p99:.3f}s")
    cpu_per_event = {kind: (flood_cpu[kind] + paced_cpu[kind]) * 1e6 / (n + paced_n) for kind in KINDS}
    total_us = sum(cpu_per_event.values())
    stored_per_event = {kind: (flood_cpu_stored[kind] + paced_cpu_stored[kind]) * 1e6 / (n + paced_n)
                        for kind in KINDS}
    stored_us = sum(stored_per_event.values())
    # What the stack would have spent idle over the same seconds (measured before the flood): for reading only.
    above_idle_us = total_us - idle_total * (flood_seconds + paced_seconds) * 1e6 / (n + paced_n)
    timed_out = flood_caught.timed_out or paced_caught.timed_out
    print(f"CPU per event, {n + paced_n} events of the flood and paced phases, until the runners caught up"
          f"{' (TIMED OUT: a lower bound)' if timed_out else ''}: {total_us:.0f} us "
          f"(flood {sum(flood_cpu.values()) * 1e6 / n:.0f}, paced {sum(paced_cpu.values()) * 1e6 / paced_n:.0f}); "
          + ", ".join(f"{kind} {us:.0f}" for kind, us in cpu_per_event.items() if us or kind != "other"))
    print(f"  until the last event was stored only: {stored_us:.0f} us; "
          + ", ".join(f"{kind} {us:.0f}" for kind, us in stored_per_event.items() if us or kind != "other"))
    print(f"  the runners caught up {flood_caught.seconds:.0f} s after the flood was stored and "
          f"{paced_caught.seconds:.0f} s after the paced phase; the stack's idle rate over the "
          f"{flood_seconds + paced_seconds:.0f} s counted would be {total_us - above_idle_us:.0f} us per event")
    missing = [kind for kind, pids in stack_cpu.roots().items() if not pids and kind != "other"]
    if missing:
        print(f"  (no process of {', '.join(missing)} under {args.run_dir}: not counted)")
    print()
    for name, value in [("events", n), ("collector_events_per_s", round(collector_rate)),
                        ("end_to_end_events_per_s", round(end_to_end_rate)),
                        ("freshness_p50_s", round(p50, 3)), ("freshness_p99_s", round(p99, 3)),
                        ("kafka_producer_events_per_s", round(producer_rate)),
                        ("kafka_consumer_events_per_s", round(consumer_rate)),
                        ("collector_vs_kafka_producer", round(collector_rate / producer_rate, 3)),
                        ("end_to_end_vs_kafka_consumer", round(end_to_end_rate / consumer_rate, 3)),
                        ("cpu_us_per_event", round(total_us, 1)),
                        *((f"cpu_us_per_event_{kind}", round(us, 1)) for kind, us in cpu_per_event.items()),
                        ("cpu_us_per_event_until_stored", round(stored_us, 1)),
                        *((f"cpu_us_per_event_until_stored_{kind}", round(us, 1))
                          for kind, us in stored_per_event.items()),
                        ("cpu_us_per_event_above_idle", round(above_idle_us, 1)),
                        ("stack_idle_cpu_ms_per_s", round(idle_total * 1000, 1)),
                        ("runners_caught_up_s", round(flood_caught.seconds, 1)),
                        ("paced_runners_caught_up_s", round(paced_caught.seconds, 1)),
                        ("runners_caught_up_timed_out", int(timed_out)),
                        ("driver_cpu_us_per_event", round(driver_cpu * 1e6 / (n + paced_n), 1))]:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
