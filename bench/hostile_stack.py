"""Hostile inputs against a running `make up` stack: figures, not a test (the fault suite, tests/faults,
checks each input's verdict; this checks the stack a user runs).

Sends the fault suite's hostile inputs (tests/faults/hostile.py) to the stack's collector and straight
onto its events topic: messages mixed into batches of valid ones, whole hostile requests (bad JSON,
gzip bombs, 2,501 messages, bad keys, ...) and hostile records (nulls, deep nesting, over-long
fields, year-9999 times, ...). Then a canary event, and it prints: the answers by status (a 5xx is
a failure), the seconds until the canary is in PostgreSQL, whether every worker process is the one
that was running before (no fail-stop, no restart), and the dead letters stored.

    .venv/bin/python bench/hostile_stack.py [--inputs 10000]

Exit 1 if a 5xx was answered, a worker restarted or fail-stopped, or the canary is not stored in 30 s.
"""

import argparse
import os
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
from kafka import KafkaProducer
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from spoor.settings import Settings  # noqa: E402
from spoor.topics import partition_for  # noqa: E402
from tests.faults import hostile  # noqa: E402
from tests.faults.test_hostile_inputs import encode  # noqa: E402
from tests.faults.workload import canonical  # noqa: E402

RUN_DIR = Path(os.environ.get("SPOOR_RUN_DIR", "/var/tmp/spoor"))


def worker_children() -> dict[str, list[str]]:
    """Each worker supervisor's child pids: a fail-stop or a crash replaces the child."""
    children = {}
    for pidfile in sorted(RUN_DIR.glob("worker*.pid")):
        pid = pidfile.read_text().strip()
        path = Path(f"/proc/{pid}/task/{pid}/children")
        children[pidfile.stem] = path.read_text().split() if path.exists() else []
    return children


def fail_stops() -> int:
    return sum(log.read_text(errors="replace").count("fail-stopped") for log in (RUN_DIR / "logs").glob("worker*.log"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10_000, help="hostile inputs in all (75%% messages, "
                                                                   "6%% requests, 19%% topic records)")
    args = parser.parse_args()
    settings = Settings()
    key = settings.demo_write_key
    collector = f"http://{settings.collector_host}:{settings.collector_port}"
    engine = create_engine(settings.database_url)
    run = uuid.uuid4().hex[:6]
    n_messages, n_requests = args.inputs * 75 // 100, args.inputs * 6 // 100
    n_records = args.inputs - n_messages - n_requests

    mixed: list[int] = []

    def good(n: int) -> list[dict]:  # valid events of a fresh user inside hostile arrays
        mixed.append(n)
        user, now = f"hostile-mix-{run}-{len(mixed)}", datetime.now(timezone.utc)
        return [canonical({"type": "track", "userId": user, "messageId": f"{user}-{k}", "event": "Product Viewed",
                           "timestamp": now.isoformat(), "properties": {"product_id": f"P{k}"}}, now)
                for k in range(n)]

    messages = [hostile.collector_message(i, f"fzc{i:06d}") for i in range(n_messages)]
    requests = [hostile.collector_request(i, f"fzc{n_messages + i:06d}") for i in range(n_requests)]
    records = [hostile.topic_record(i, f"fzw{i:06d}", good) for i in range(n_records)]
    before, fail_stops_before = worker_children(), fail_stops()
    with engine.connect() as conn:
        dead_before = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar()
    print(f"hostile_inputs {args.inputs} (messages {n_messages}, requests {n_requests}, topic records {n_records})")
    print(f"workers {len(before)}: {before}")

    answers: Counter = Counter()
    started = time.monotonic()
    http = httpx.Client(base_url=collector, timeout=60)
    for start in range(0, len(messages), 50):
        valid = [{"type": "track", "userId": f"hostile-valid-{run}-{start}", "messageId": f"hv-{run}-{start}",
                  "event": "Product Viewed", "properties": {"product_id": "P1"}}]
        body = encode({"batch": valid + [m.body for m in messages[start:start + 50]]})
        answers[http.post("/v1/batch", content=body, auth=(key, ""),
                          headers={"Content-Type": "application/json"}).status_code] += 1
    for request in requests:
        answers[http.request(request.method, request.path, content=request.content,
                             auth=(key, "") if request.auth else None,
                             headers={"Content-Type": "application/json", **request.headers}).status_code] += 1
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             max_request_size=2 * 1024 * 1024)
    for record in records:
        record_key = record.key or record.tag.encode()
        partition = None if record.raw_key else partition_for(record_key.decode(), settings.topic_partitions)
        producer.send(settings.events_topic, key=record_key, value=record.value, partition=partition)
    producer.flush()
    producer.close()
    print(f"sent_s {time.monotonic() - started:.1f}")
    print("answers " + " ".join(f"{status}:{count}" for status, count in sorted(answers.items())))

    canary = f"canary-{run}"
    response = http.post("/v1/track", auth=(key, ""), json={"userId": canary, "messageId": canary,
                                                            "event": "Product Viewed"})
    sent = time.monotonic()
    stored_after = None
    while response.status_code == 200 and time.monotonic() - sent < 30:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM events WHERE event_id = :id"), {"id": canary}).first():
                stored_after = time.monotonic() - sent
                break
        time.sleep(0.1)
    time.sleep(5)  # the dead letters of the last records
    after, fail_stops_after = worker_children(), fail_stops()
    with engine.connect() as conn:
        dead_after = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar()
    print(f"canary_status {response.status_code}")
    print(f"canary_persisted_s {stored_after:.2f}" if stored_after is not None else "canary_persisted_s NOT STORED")
    print(f"workers_unchanged {after == before} (after: {after})")
    print(f"worker_fail_stops {fail_stops_after - fail_stops_before}")
    print(f"dead_letters_stored {dead_after - dead_before}")
    server_errors = sum(count for status, count in answers.items() if status >= 500)
    ok = not server_errors and after == before and fail_stops_after == fail_stops_before and stored_after is not None
    print("result " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
