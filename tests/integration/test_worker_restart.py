"""SIGKILL the worker in the middle of a stream: after a restart nothing is lost or counted twice."""

from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import text

from spoor.collector_client import CollectorClient
from spoor.simulate import simulate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

KIND_OF = {"Product Viewed": "product_views", "Product Clicked": "clicks", "Product Added": "cart_adds",
           "Product Removed": "cart_removes", "Checkout Started": "checkouts", "Order Completed": "orders"}


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
                                                                   start_process):
    messages = simulate(users=400, seed=99)
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
    first = start_process("worker", worker_batch_max=100)
    done_before_kill = wait_until(lambda: (n := persisted()) >= total // 10 and n, 90, "the worker to start")
    first.kill()
    assert done_before_kill < total, "the worker finished before it could be killed: use more events"

    start_process("worker", worker_batch_max=100)
    wait_until(lambda: persisted() == total, 120, "the restarted worker to catch up")

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
