"""The Python SDK (sdk/python) against the real collector, Kafka, worker and PostgreSQL."""

from decimal import Decimal

import pytest
from spoor_sdk import Client, KafkaTransport, RetryPolicy
from sqlalchemy import text

from tests.support.local_stack import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

QUICK_RETRIES = RetryPolicy(max_retries=40, base_s=0.2, cap_s=1.0)


@pytest.fixture(scope="module")
def worker(start_process):
    return start_process("worker")


def rows(engine, where: str, **params) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM events WHERE {where} ORDER BY event_id"),
                                                       params)]


def count(engine, prefix: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events WHERE event_id LIKE :p"), {"p": prefix + "%"}).scalar()


def test_tracking_calls_land_in_postgresql(collector, worker, write_key, engine):
    client = Client(write_key, collector, flush_at_exit=False, flush_interval=0.1)
    client.page("sdk-ann", "Home", {"url": "https://shop.example/"}, message_id="sdk-1")
    client.product_viewed("sdk-ann", product_id="P1", price=Decimal("19.99"), category="Shoes", message_id="sdk-2")
    client.product_added("sdk-ann", product_id="P1", price=Decimal("19.99"), quantity=2, message_id="sdk-3")
    client.product_removed("sdk-ann", product_id="P1", price=Decimal("19.99"), message_id="sdk-4")
    client.checkout_started("sdk-ann", message_id="sdk-5")
    client.order_completed("sdk-ann", order_id="o-1", revenue=Decimal("19.99"), currency="eur", message_id="sdk-6",
                           products=[{"product_id": "P1", "price": Decimal("19.99"), "quantity": 1}])
    client.identify("sdk-ann", {"plan": "pro"}, message_id="sdk-7")
    client.screen(None, "Cart", anonymous_id="sdk-anon", message_id="sdk-8")
    client.track("sdk-ann", "Wishlist Shared", {"list": "summer"}, message_id="sdk-9")
    assert client.shutdown(30)
    assert (client.stats.sent, client.stats.failed, client.stats.dropped) == (9, 0, 0)

    wait_until(lambda: count(engine, "sdk-") == 9, 60, "the SDK's 9 events in PostgreSQL")
    got = {r["event_id"]: r for r in rows(engine, "event_id LIKE 'sdk-%'")}
    assert [got[f"sdk-{i}"]["kind"] for i in range(1, 10)] == [
        "page_view", "product_view", "cart_add", "cart_remove", "checkout", "purchase", "identify", "page_view",
        "custom"]
    assert (got["sdk-3"]["price"], got["sdk-3"]["quantity"], got["sdk-4"]["quantity"]) == (Decimal("19.99"), 2, 1)
    assert (got["sdk-6"]["revenue"], got["sdk-6"]["currency"], got["sdk-6"]["order_id"]) == (
        Decimal("19.99"), "EUR", "o-1")
    assert got["sdk-8"]["user_key"] == "sdk-anon" and {r["source"] for r in got.values()} == {"web"}


def test_events_wait_for_a_collector_that_is_down(start_process, worker, write_key, engine):
    port = free_port()
    client = Client(write_key, f"http://127.0.0.1:{port}", flush_at_exit=False, flush_interval=0.05,
                    retry=QUICK_RETRIES)
    for i in range(30):
        client.track(f"late-{i % 3}", "Product Viewed", {"product_id": f"P{i}"}, message_id=f"late-{i:02}")
    wait_until(lambda: client.stats.retries >= 2, 30, "the SDK to retry against the absent collector")
    start_process("collector", collector_port=port)
    assert client.flush(60)
    assert (client.stats.sent, client.stats.failed) == (30, 0)
    client.shutdown()
    wait_until(lambda: count(engine, "late-") == 30, 60, "the 30 delayed events in PostgreSQL")


def test_rate_limits_are_honoured_without_losing_events(start_process, worker, engine):
    from spoor.storage.write_keys import create_key
    key = create_key(engine, "sdk-limited", "backend")
    port = free_port()
    start_process("collector", collector_port=port, rate_limit_events_per_s=40, rate_limit_burst_events=20)
    client = Client(key, f"http://127.0.0.1:{port}", flush_at_exit=False, batch_size=20, flush_interval=0.05,
                    retry=QUICK_RETRIES)
    for i in range(120):
        client.track(f"rl-{i % 7}", "Product Viewed", message_id=f"rl-{i:03}")
    assert client.flush(60)
    assert (client.stats.sent, client.stats.failed) == (120, 0)
    assert client.stats.retries >= 1  # 120 events at 40/s cannot get through without some 429s
    client.shutdown()
    wait_until(lambda: count(engine, "rl-") == 120, 60, "every rate-limited event in PostgreSQL")
    assert {r["source"] for r in rows(engine, "event_id LIKE 'rl-%'")} == {"backend"}


def test_kafka_transport_produces_canonical_events(worker, test_settings, engine):
    transport = KafkaTransport(test_settings.kafka_bootstrap, topic=test_settings.events_topic, source="billing")
    client = Client(transport=transport, flush_at_exit=False, flush_interval=0.05)
    client.order_completed("kafka-bob", order_id="o-7", revenue=Decimal("42.50"), currency="USD",
                           message_id="kafka-1")
    client.product_added("kafka-bob", product_id="P9", price="3.25", quantity=4, message_id="kafka-2")
    client.track("kafka-bob", "Product Added", {"product_id": "P9", "price": -1}, message_id="kafka-bad")
    assert client.shutdown(30)
    assert client.stats.sent == 3

    wait_until(lambda: count(engine, "kafka-") == 2, 60, "the Kafka transport's events")
    order, added = rows(engine, "event_id LIKE 'kafka-%'")
    assert (order["kind"], order["revenue"], order["currency"], order["source"]) == (
        "purchase", Decimal("42.50"), "USD", "billing")
    assert (added["kind"], added["price"], added["quantity"]) == ("cart_add", Decimal("3.25"), 4)

    def worker_dead_letter():
        with engine.connect() as conn:
            return conn.execute(text("SELECT processor, field, payload FROM dead_letters "
                                     "WHERE payload->>'event_id' = 'kafka-bad'")).first()

    dead = wait_until(worker_dead_letter, 60, "the invalid event dead-lettered by the worker")
    assert (dead.processor, dead.field) == ("worker", "price")
