"""Collector benchmark: figures, not a test. Needs Kafka and PostgreSQL (`deploy/stack.sh infra`).

Starts one `spoor collector` process of its own (own database, topics, write key and port) and:
1. throughput: batches of 100 events posted as fast as it answers, from several keep-alive
   connections; events/s per round;
   and the collector's CPU per event (its processes' user + system time from /proc over the round);
2. latency: batches paced (open loop) at half the median throughput; p50 / p99 request latency.
Events look like a shop's: product views, cart adds and purchases of many users, each with a
browser user agent from a pool of a few dozen (so the UA cache sees realistic repetition) and an IP.
Also times the collector's intake in this process (normalisation + enrichment per event) and the
share of it spent enriching. Prints each round, the medians, then `name: value` lines.

    .venv/bin/python bench/collector_throughput.py --rounds 3 --batches 300 --latency-seconds 10

``--code DIR`` runs the collector from another checkout (e.g. `git archive 391f7a8 | tar -x -C /tmp/old`)
while this file, its database and topics stay the same: an A/B of two commits in one session. Its
`spoor.*` packages come from a tree of links to DIR's folders, first on the collector's PYTHONPATH;
put that tree on this script's PYTHONPATH too for the in-process intake figure to be DIR's.
"""

import argparse
import asyncio
import base64
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from sqlalchemy import create_engine

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # after PYTHONPATH: see --code

from spoor.settings import Settings, environment  # noqa: E402
from spoor.storage.migrate import upgrade  # noqa: E402
from spoor.storage.write_keys import create_key  # noqa: E402
from spoor.topics import create_topics  # noqa: E402
from tests.support.scratch_db import ScratchDatabase

BATCH = 100
BROWSERS = [f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 "
            "Safari/537.36" for v in range(110, 130)]
BROWSERS += [f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             f"Version/17.{v} Mobile/15E148 Safari/604.1" for v in range(6)]
BROWSERS += [f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0" for v in range(115, 125)]
BROWSERS += ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]


def make_bodies(batches: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(batches):
        messages = []
        for _ in range(BATCH):
            user = f"user-{rng.randrange(50_000)}"
            kind = rng.choices(["Product Viewed", "Product Added", "Order Completed"], [80, 15, 5])[0]
            props = {"product_id": f"P{rng.randrange(2000)}", "price": round(rng.uniform(1, 200), 2)}
            if kind == "Order Completed":
                props = {"order_id": uuid.uuid4().hex[:12], "revenue": props["price"], "currency": "EUR"}
            messages.append({"type": "track", "userId": user, "event": kind, "properties": props,
                             "messageId": uuid.uuid4().hex,
                             "context": {"userAgent": rng.choice(BROWSERS),
                                         "ip": f"198.51.{rng.randrange(256)}.{rng.randrange(256)}",
                                         "page": {"url": "https://shop.example/p"}}})
        bodies.append(orjson.dumps({"batch": messages}))
    return bodies


class Connection:
    """One keep-alive HTTP/1.1 connection posting pre-built bodies (little client overhead)."""

    def __init__(self, host: str, port: int, auth: str):
        self.host, self.port, self.auth = host, port, auth
        self.reader = self.writer = None

    async def post(self, body: bytes) -> int:
        for attempt in range(2):  # once more on a fresh connection if the server closed an idle one
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = (f"POST /v1/batch HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: {self.auth}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            try:
                self.writer.write(head + body)
                status_line = await self.reader.readline()
            except ConnectionError:
                status_line = b""
            if status_line or attempt:
                break
            self.writer.close()
            self.writer = None
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def flood(host, port, auth, bodies: list[bytes], connections: int) -> float:
    """Events/s for posting every body, ``connections`` requests in flight."""
    queue = list(reversed(bodies))
    statuses: dict[int, int] = {}

    async def worker():
        conn = Connection(host, port, auth)
        while queue:
            status = await conn.post(queue.pop())
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise SystemExit(f"unexpected answers during the flood: {statuses}")
    return len(bodies) * BATCH / elapsed


async def paced(host, port, auth, bodies: list[bytes], events_per_s: float, seconds: float) -> list[float]:
    """Open loop: a request every BATCH/events_per_s seconds, whatever the previous ones do. Latencies in s."""
    interval = BATCH / events_per_s
    total = max(1, int(seconds / interval))
    idle: list[Connection] = []
    latencies: list[float] = []

    async def one(body: bytes):
        conn = idle.pop() if idle else Connection(host, port, auth)
        started = time.perf_counter()
        status = await conn.post(body)
        latencies.append(time.perf_counter() - started)
        idle.append(conn)
        if status != 200:
            raise SystemExit(f"unexpected answer {status} during the paced phase")

    tasks = []
    begin = time.perf_counter()
    for i in range(total):
        await asyncio.sleep(max(0.0, begin + i * interval - time.perf_counter()))
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    return latencies


def intake_cost(bodies: list[bytes]) -> tuple[float, float]:
    """In this process: microseconds per event for the collector's intake, and the share of it spent enriching."""
    from datetime import datetime, timezone

    from spoor.ingest.enrich import enrichment
    from spoor.ingest.intake import Intake, RequestFacts
    batches = [orjson.loads(body)["batch"] for body in bodies]
    intake = Intake("events", "dlq", 4, 32 * 1024)
    facts = RequestFacts(received_at=datetime.now(timezone.utc), source="web", user_agent=None, peer_ip="192.0.2.1")
    for batch in batches[:10]:
        intake.records(batch, facts)  # warm the UA cache, as a running collector is
    started = time.perf_counter()
    for batch in batches:
        intake.records(batch, facts)
    total = time.perf_counter() - started
    started = time.perf_counter()
    for batch in batches:
        for message in batch:
            enrichment(message["context"], None, "192.0.2.1")
    enriching = time.perf_counter() - started
    events = len(batches) * BATCH
    return total / events * 1e6, enriching / total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (a collector may run several processes)."""
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*"):
            try:
                pids += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
        index += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, from /proc."""
    total = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def package_tree(code: Path) -> Path:
    """A directory to put first on PYTHONPATH so that `spoor.*` imports come from checkout ``code``
    (the packages are top-level folders there, mapped to spoor.<name> as pyproject.toml does)."""
    root = Path("/tmp/spoor-bench-code") / str(code.resolve()).strip("/").replace("/", "_")
    package = root / "spoor"
    package.mkdir(parents=True, exist_ok=True)
    for item in (code / "spoor").iterdir():
        if not (package / item.name).exists():
            (package / item.name).symlink_to(item)
    for name in ("ingest", "stream_processors", "storage", "alerts", "segments", "campaigns", "privacy", "cli"):
        if (code / name).is_dir() and not (package / name).exists():
            (package / name).symlink_to(code / name)
    return root


def start_collector(settings: Settings, log_path: Path, code: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, **environment(settings)}
    if code is not None:
        env["PYTHONPATH"] = str(package_tree(code))
    process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "collector"],
                               cwd=package_tree(code) if code else REPO, env=env,
                               stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the collector exited: see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.collector_port}/healthz", timeout=1):
                return process
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the collector did not become healthy within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300, help="batches of 100 per throughput round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--code", type=Path, default=None,
                        help="run the collector from this checkout (default: this one)")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    base = Settings()
    database = ScratchDatabase(base.database_url, f"spoor_bench_{run}")
    settings = base.model_copy(update={
        "database_url": database.url,
        "events_topic": f"spoor.bench-{run}.events", "dead_letter_topic": f"spoor.bench-{run}.events.dlq",
        "collector_port": args.port, "rate_limit_events_per_s": 1e9, "rate_limit_burst_events": 10**9})
    process = None
    try:
        upgrade(settings.database_url)
        create_topics(settings)
        key = create_key(create_engine(settings.database_url), "bench", "web")
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        log_path = Path(f"/tmp/spoor-bench-collector-{run}.log")
        process = start_collector(settings, log_path, args.code)
        bodies = make_bodies(args.batches, seed=1)
        host, port = "127.0.0.1", args.port
        asyncio.run(flood(host, port, auth, bodies[:20], 2))  # warm-up: connections, producer metadata, UA cache

        rates, cpus = [], []
        for round_no in range(1, args.rounds + 1):
            cpu_before = cpu_seconds(process.pid)
            rate = asyncio.run(flood(host, port, auth, bodies, args.connections))
            cpus.append((cpu_seconds(process.pid) - cpu_before) / (len(bodies) * BATCH) * 1e6)
            rates.append(rate)
            print(f"throughput round {round_no}: {rate:,.0f} events/s, collector CPU {cpus[-1]:.1f} us/event "
                  f"({args.batches} batches of {BATCH}, {args.connections} connections)", flush=True)
        rate, cpu_us = statistics.median(rates), statistics.median(cpus)
        half = rate / 2
        costs = [intake_cost(bodies) for _ in range(args.rounds)]
        intake_us = statistics.median(c[0] for c in costs)
        enrich_share = statistics.median(c[1] for c in costs)
        print(f"intake in-process: {intake_us:.1f} us/event, of which enrichment {enrich_share:.0%}", flush=True)
        p50s, p99s = [], []
        for round_no in range(1, args.rounds + 1):
            latencies = asyncio.run(paced(host, port, auth, bodies, half, args.latency_seconds))
            p50s.append(percentile(latencies, 0.50))
            p99s.append(percentile(latencies, 0.99))
            print(f"latency round {round_no} at {half:,.0f} events/s: {len(latencies)} requests, "
                  f"p50 {p50s[-1] * 1000:.1f} ms, p99 {p99s[-1] * 1000:.1f} ms", flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        from kafka.admin import KafkaAdminClient
        kafka_admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","))
        kafka_admin.delete_topics([settings.events_topic, settings.dead_letter_topic])
        kafka_admin.close()
        database.drop()

    print()
    print(f"median over {args.rounds} rounds: {rate:,.0f} events/s, {cpu_us:.1f} us of collector CPU per event; "
          f"at {half:,.0f} events/s "
          f"p50 {statistics.median(p50s) * 1000:.1f} ms, p99 {statistics.median(p99s) * 1000:.1f} ms")
    print()
    for name, value in [("collector_events_per_s", round(rate)), ("cpu_us_per_event_collector", round(cpu_us, 1)),
                        ("latency_load_events_per_s", round(half)),
                        ("latency_p50_ms", round(statistics.median(p50s) * 1000, 1)),
                        ("latency_p99_ms", round(statistics.median(p99s) * 1000, 1)),
                        ("intake_us_per_event", round(intake_us, 1)),
                        ("enrichment_share_of_intake", round(enrich_share, 3))]:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
