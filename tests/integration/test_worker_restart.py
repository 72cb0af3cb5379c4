"""SIGKILL the worker in the middle of a stream: after a restart nothing is lost or counted twice."""

from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.cli.simulate import simulate
from tests.support.local_stack import wait_until

pytestmark = pytest.mark.integration

KIND_OF = {"Product Viewed": "product_views", "Product Clicked": "clicks", "Product Added": "cart_adds",
           "Product Removed": "cart_removes", "Checkout Started": "checkouts", "Order Completed": "orders"}


def diagnose(settings, engine) -> str:
    """Where a stalled worker stands: committed offsets vs log end, and database activity."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    committed = admin.list_group_offsets(settings.worker_app_id)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    parts = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
    ends = consumer.end_offsets(parts)
    consumer.close()
    admin.close()
    lines = [f"committed {str(committed)[:600]}",
             f"end {sorted((tp.partition, ends[tp]) for tp in parts)}"]
    # Where the missing events sit in the topic.
    import orjson
    reader = KafkaConsumer(settings.events_topic, bootstrap_servers=settings.kafka_bootstrap,
                           auto_offset_reset="earliest", consumer_timeout_ms=3000, group_id=None)
    location = {}
    for record in reader:
        value = orjson.loads(record.value)
        for e in value if isinstance(value, list) else []:  # identity and erasure records are objects
            location[e["event_id"]] = (record.partition, record.offset)
    reader.close()
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(text("SELECT event_id FROM events"))}
    missing = sorted({location[i] for i in location if i not in stored})
    lines.append(f"missing events sit in records (partition, offset): {missing[:40]}")
    with engine.connect() as conn:
        lines += [str(tuple(r)) for r in conn.execute(text(
            "SELECT pid, state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity "
            "WHERE datname = current_database()"))]
    return "\n".join(lines)


def ground_truth(messages: list[dict]) -> dict[str, dict]:
    """Computed straight from the messages, independently of the worker's code."""
    truth: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    seen = set()
    for m in messages:
        if m["messageId"] in seen:
            continue
        seen.add(m["messageId"])
        user = truth[m["userId"]]
        user["events"] += 1
        if m["type"] == "page":
            user["page_views"] += 1
        else:
            user[KIND_OF[m["event"]]] += 1
            if m["event"] == "Order Completed":
                user["revenue"] += Decimal(str(m["properties"]["revenue"]))
    return truth


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(collector, write_key, engine,
                                                                   start_process, test_settings):
    messages = simulate(users=1500, seed=99)
    client = CollectorClient(collector, write_key)
    batches = [messages[i:i + 100] for i in range(0, len(messages), 100)]
    for batch in batches:
        assert client.send_batch(batch)[0] == 200
    for batch in batches[::5]:  # client retries: every fifth batch arrives twice
        assert client.send_batch(batch)[0] == 200
    client.close()
    total = len(messages)

    def persisted() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM events")).scalar()

    # Small batches so the worker commits many times before it is killed.
    first = start_process("worker", worker_batch_max=50)
    done_before_kill = wait_until(lambda: (n := persisted()) >= 1000 and n, 90, "the worker to start",
                                  interval=0.05)
    first.kill()
    assert done_before_kill < total, "the worker finished before it could be killed: use more events"

    start_process("worker", worker_batch_max=50)
    try:
        wait_until(lambda: persisted() == total, 120, "the restarted worker to catch up")
    except AssertionError as err:
        raise AssertionError(f"{err}: {persisted()} of {total} events persisted "
                             f"({done_before_kill} before the kill)\n{diagnose(test_settings, engine)}") from None

    truth = ground_truth(messages)
    columns = ["events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts",
               "orders"]

    def profiles_match() -> list:
        with engine.connect() as conn:
            rows = {r.user_key: r._mapping for r in conn.execute(text("SELECT * FROM user_profiles"))}
        return [user for user, want in truth.items()
                if user not in rows
                or any(rows[user][c] != want.get(c, 0) for c in columns)
                or rows[user]["revenue"] != want.get("revenue", Decimal(0))]

    # Persisted events and profiles are written together, but give the last batch a moment.
    wait_until(lambda: not profiles_match(), 30, "profiles to equal the ground truth")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_profiles")).scalar() == len(truth)
