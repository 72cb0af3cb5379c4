"""End to end, like a shop's tracking: HTTP -> collector -> Kafka -> Faust -> PostgreSQL."""

import gzip
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import orjson
import pytest
from sqlalchemy import text

from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

T = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def at(minutes: int) -> str:
    return (T + timedelta(minutes=minutes)).isoformat()


def track(message_id: str, minutes: int, event: str, user: dict, **properties) -> dict:
    return {"type": "track", "messageId": message_id, "timestamp": at(minutes), "event": event,
            "properties": properties, **user}


ALICE = {"userId": "alice"}
BOB = {"anonymousId": "anon-bob"}
FIRST_BATCH = [
    {"type": "page", "messageId": "m-a1", "timestamp": at(0), "name": "Home", **ALICE},
    track("m-a2", 1, "Product Viewed", ALICE, product_id="P1", price=10),
    track("m-a3", 2, "Product Viewed", ALICE, product_id="P2", price=7.5),
    track("m-a4", 3, "Product Viewed", ALICE, product_id="P1", price=10),
    track("m-a5", 4, "Product Added", ALICE, product_id="P1", price=10, quantity=2),
    track("m-a6", 5, "Checkout Started", ALICE),
    track("m-a7", 6, "Order Completed", ALICE, order_id="o-1", revenue=20, currency="EUR",
          products=[{"product_id": "P1", "price": 10, "quantity": 2}]),
    track("m-b1", 1, "Product Viewed", BOB, product_id="P3", price=5),
    track("m-b2", 2, "Product Added", BOB, product_id="P3", price=5),
    track("m-bad", 2, "Product Added", {"userId": "carol"}, product_id="P9", price=-5),
    track("m-b3", 3, "Product Added", BOB, product_id="P2", price=7.5, quantity=3),
    track("m-b4", 4, "Product Removed", BOB, product_id="P3"),
]


@pytest.fixture(scope="module")
def worker(start_process):
    return start_process("worker")


def profile(engine, user_key: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM user_profiles WHERE user_key = :k"), {"k": user_key}).first()
        return dict(row._mapping) if row else None


def test_events_flow_to_exact_profiles(collector, worker, write_key, engine):
    client = httpx.Client(base_url=collector, auth=(write_key, ""), timeout=30)

    first = client.post("/v1/batch", json={"batch": FIRST_BATCH})
    assert first.status_code == 400
    assert first.json()["accepted"] == len(FIRST_BATCH) - 1
    assert first.json()["rejected"] == [{"index": 9, "field": "properties.price",
                                         "reason": "must be a finite number >= 0"}]

    # A client retry of an event already sent, and an event that arrives late but happened first.
    second = client.post("/v1/batch", json={"batch": [
        FIRST_BATCH[1], track("m-a0", -10, "Product Clicked", ALICE, product_id="P1")]})
    assert second.status_code == 200 and second.json() == {"success": True}

    # Single-message endpoints, write key in the body as some Segment libraries send it.
    bare = httpx.Client(base_url=collector, timeout=30)
    carol = {"userId": "carol", "writeKey": write_key}
    for path, body in [("/v1/identify", {"messageId": "m-c1", "traits": {"email": "carol@example.com"}}),
                       ("/v1/track", {"messageId": "m-c2", "event": "Product Viewed",
                                      "properties": {"product_id": "P1"}}),
                       ("/v1/page", {"messageId": "m-c3", "name": "Cart"}),
                       ("/v1/screen", {"messageId": "m-c4", "name": "Checkout"})]:
        response = bare.post(path, json={**body, **carol, "timestamp": at(30)})
        assert response.status_code == 200, (path, response.text)

    wait_until(lambda: (profile(engine, "carol") or {}).get("events") == 4
               and (profile(engine, "alice") or {}).get("events") == 8, 60, "profiles to be written")

    alice = profile(engine, "alice")
    assert {k: alice[k] for k in ("events", "page_views", "product_views", "distinct_products_viewed",
                                  "clicks", "cart_adds", "cart_removes", "checkouts", "orders")} == {
        "events": 8, "page_views": 1, "product_views": 3, "distinct_products_viewed": 2, "clicks": 1,
        "cart_adds": 1, "cart_removes": 0, "checkouts": 1, "orders": 1}
    assert alice["revenue"] == Decimal("20") and alice["cart_value"] == 0
    assert alice["first_seen_at"] == T - timedelta(minutes=10)  # the late event moved first_seen back
    assert alice["last_seen_at"] == alice["first_purchase_at"] == T + timedelta(minutes=6)

    bob = profile(engine, "anon-bob")
    assert (bob["events"], bob["product_views"], bob["cart_adds"], bob["cart_removes"], bob["orders"]) == \
        (4, 1, 2, 1, 0)
    assert bob["cart_value"] == Decimal("22.5")  # 3 x 7.5 left after P3 was removed

    carol_profile = profile(engine, "carol")
    assert (carol_profile["page_views"], carol_profile["product_views"]) == (2, 1)

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 16
        assert conn.execute(text("SELECT count(*) FROM events WHERE event_id = 'm-a2'")).scalar() == 1
    dead = wait_until(lambda: _dead_letters(engine), 30, "the rejected event in dead_letters")
    assert [(d["field"], d["reason"], d["processor"], d["payload"]["messageId"]) for d in dead] == [
        ("properties.price", "must be a finite number >= 0", "collector", "m-bad")]


def _dead_letters(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM dead_letters"))]


def test_write_key_is_required_and_checked(collector):
    body = {"batch": [track("m-x", 0, "Product Viewed", ALICE)]}
    assert httpx.post(f"{collector}/v1/batch", json=body).status_code == 401
    assert httpx.post(f"{collector}/v1/batch", json=body, auth=("not-a-key", "")).status_code == 401
    assert httpx.post(f"{collector}/v1/batch", json={**body, "writeKey": "nope"}).status_code == 401


def test_bodies_are_bounded(collector, write_key, test_settings):
    big = {"batch": [track(f"m-{i}", 0, "Product Viewed", ALICE, blob="x" * 1000) for i in range(600)]}
    response = httpx.post(f"{collector}/v1/batch", json=big, auth=(write_key, ""))
    assert response.status_code == 413
    bomb = gzip.compress(orjson.dumps({"batch": [], "pad": "0" * (test_settings.max_body_bytes * 2)}))
    response = httpx.post(f"{collector}/v1/batch", content=bomb, auth=(write_key, ""),
                          headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert response.status_code == 413
    assert httpx.post(f"{collector}/v1/batch", content=b"{not json", auth=(write_key, "")).status_code == 400


def test_gzip_bodies_are_accepted(collector, write_key):
    body = gzip.compress(orjson.dumps({"batch": [track("m-gz", 0, "Product Viewed", {"userId": "gz"})]}))
    response = httpx.post(f"{collector}/v1/batch", content=body, auth=(write_key, ""),
                          headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert response.status_code == 200


def test_collector_exports_metrics(collector, write_key):
    httpx.post(f"{collector}/v1/track", json={"userId": "m", "event": "X"}, auth=(write_key, ""))
    metrics = httpx.get(f"{collector}/metrics").text
    assert 'spoor_collector_requests_total{endpoint="track",status="200"}' in metrics
    assert 'spoor_collector_events_total{outcome="accepted"}' in metrics


def test_backend_services_can_produce_canonical_events_directly(worker, test_settings, engine):
    from kafka import KafkaProducer

    from spoor.events import Event
    event = Event(event_id="srv-1", kind="purchase", name="Order Completed", user_key="backend-user",
                  event_time=T, received_at=T, source="backend", order_id="o-9", revenue=Decimal("42.50"))
    producer = KafkaProducer(bootstrap_servers=test_settings.kafka_bootstrap, acks="all")
    producer.send(test_settings.events_topic, key=b"backend-user", value=event.to_json())
    producer.send(test_settings.events_topic, key=b"broken", value=b'{"event_id": "srv-2", "kind": "teleport"}')
    producer.send(test_settings.events_topic, key=b"broken", value=b"not json at all")
    producer.flush()
    producer.close()

    wait_until(lambda: profile(engine, "backend-user"), 60, "the backend event's profile")
    row = profile(engine, "backend-user")
    assert (row["orders"], row["revenue"]) == (1, Decimal("42.50"))
    def worker_dead_letters() -> list[dict] | None:
        rows = [d for d in _dead_letters(engine) if d["processor"] == "worker"]
        return rows if len(rows) == 2 else None

    dead = wait_until(worker_dead_letters, 60, "the worker's two dead letters")
    reasons = sorted((d["field"], d["payload"].get("event_id") or d["payload"].get("raw")) for d in dead)
    assert reasons == [("$", "not json at all"), ("kind", "srv-2")]


def test_worker_exports_metrics(worker, test_settings, engine):
    wait_until(lambda: profile(engine, "alice"), 60, "the first test's events")
    response = httpx.get(f"http://127.0.0.1:{test_settings.worker_web_port}/metrics")
    assert response.status_code == 200
    assert 'spoor_worker_events_total{outcome="applied"}' in response.text
    assert "spoor_worker_freshness_seconds_bucket" in response.text
