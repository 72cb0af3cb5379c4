"""Segment's own libraries, pointed at Spoor's host, deliver events that land correctly in PostgreSQL."""

import os
import subprocess
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.support.local_stack import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

NODE_PROJECT = REPO / "tests" / "compat" / "segment-node"


@pytest.fixture(scope="module")
def worker(start_process):
    return start_process("worker")


def events(engine, prefix: str) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM events WHERE event_id LIKE :p"), {"p": prefix + "%"})
        return {r.event_id: dict(r._mapping) for r in rows}


def test_segment_python_library(collector, worker, write_key, engine):
    from segment.analytics import Client

    failures = []
    client = Client(write_key, host=collector, gzip=True, on_error=lambda err, batch: failures.append(err),
                    upload_interval=0.1, max_retries=3)
    client.identify("seg-py-user", {"email": "someone@example.com"}, message_id="seg-py-1")
    client.page("seg-py-user", name="Home", properties={"url": "https://shop.example/"}, message_id="seg-py-2")
    client.track("seg-py-user", "Product Viewed", {"product_id": "P1", "price": 12.5, "category": "Hats"},
                 message_id="seg-py-3", context={"userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) "
                                                 "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
                                                 "ip": "203.0.113.50"})
    client.track("seg-py-user", "Product Added", {"product_id": "P1", "price": 12.5, "quantity": 2},
                 message_id="seg-py-4")
    client.track(anonymous_id="seg-py-anon", event="Order Completed", message_id="seg-py-5",
                 properties={"order_id": "o-py", "total": 25, "currency": "eur"})
    client.flush()
    client.shutdown()
    assert failures == []

    got = wait_until(lambda: (e := events(engine, "seg-py-")) and len(e) == 5 and e, 60, "Segment Python's events")
    assert [got[f"seg-py-{i}"]["kind"] for i in range(1, 6)] == [
        "identify", "page_view", "product_view", "cart_add", "purchase"]
    viewed = got["seg-py-3"]
    assert (viewed["user_key"], viewed["product_id"], viewed["price"], viewed["category"]) == (
        "seg-py-user", "P1", Decimal("12.5"), "Hats")
    assert (viewed["browser"], viewed["os"], viewed["anonymized_ip"]) == ("Safari", "Mac OS X", "203.0.113.0")
    assert (got["seg-py-4"]["quantity"], got["seg-py-5"]["revenue"], got["seg-py-5"]["currency"]) == (
        2, Decimal("25"), "EUR")
    assert got["seg-py-5"]["user_key"] == "seg-py-anon" and {e["source"] for e in got.values()} == {"web"}


def test_segment_node_library(collector, worker, write_key, engine):
    assert (NODE_PROJECT / "node_modules" / "@segment" / "analytics-node").is_dir(), \
        "run deploy/segment_node.sh (make test does) to install Segment's Node library"
    done = subprocess.run(["node", "send.mjs"], cwd=NODE_PROJECT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPOOR_URL": collector, "SPOOR_WRITE_KEY": write_key, "RUN": "seg"})
    assert done.returncode == 0, done.stderr
    assert "sent 5 events" in done.stdout

    got = wait_until(lambda: (e := events(engine, "seg-n")) and len(e) == 5 and e, 60, "Segment Node's events")
    assert [got[f"seg-n{i}"]["kind"] for i in range(1, 6)] == [
        "identify", "page_view", "product_view", "cart_add", "purchase"]
    assert (got["seg-n4"]["product_id"], got["seg-n4"]["price"], got["seg-n4"]["quantity"]) == (
        "P1", Decimal("12.5"), 2)
    order = got["seg-n5"]
    # No revenue or total: Spoor sums the products, as it documents.
    assert (order["user_key"], order["order_id"], order["revenue"], order["currency"]) == (
        "seg-node-anon", "o-n", Decimal("25"), "USD")
    assert got["seg-n1"]["user_key"] == "seg-node-user"
