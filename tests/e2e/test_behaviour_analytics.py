"""Sessions, rolling windows, funnels and triggers: HTTP -> Kafka -> Faust (RocksDB) -> PostgreSQL + Kafka.

Hand-made shoppers with fixed event times; every expected figure below is worked out by hand.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from tests.support.event_clock import clock_messages
from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

B = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
WORKER = {"cart_abandonment_delay_s": 3600, "browse_abandonment_delay_s": 1800, "browse_abandonment_views": 3,
          "win_back_after_days": 1, "trigger_lateness_s": 300}


def at(minutes: float) -> datetime:
    return B + timedelta(minutes=minutes)


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class Shopper:
    def __init__(self, user: str):
        self.user = user
        self.n = 0

    def msg(self, minutes: float, kind: str, event: str | None = None, context: dict | None = None, **props) -> dict:
        self.n += 1
        message = {"type": kind, "userId": self.user, "messageId": f"{self.user}-{self.n}",
                   "timestamp": iso(at(minutes)), "properties": props, "context": context or {}}
        if event:
            message["event"] = event
        return message


def scenario() -> tuple[list[dict], list[dict]]:
    """(messages in order, late messages sent afterwards)."""
    alice, bob, carol = Shopper("alice"), Shopper("bob"), Shopper("carol")
    google = {"page": {"url": "https://shop.example/", "referrer": "https://www.google.com/search?q=boots"},
              "campaign": {"source": "google", "name": "winter"}}
    facebook = {"page": {"url": "https://shop.example/bags", "referrer": "https://www.facebook.com/"}}
    messages = [
        alice.msg(0, "page", context=google),
        alice.msg(5, "track", "Product Viewed", product_id="p1", category="shoes", price=20),
        alice.msg(10, "track", "Product Added", product_id="p1", category="shoes", price=20, quantity=1),
        alice.msg(120, "page", context=facebook),
        alice.msg(125, "track", "Product Viewed", product_id="p2", category="bags", price=30),
        alice.msg(126, "track", "Product Added", product_id="p2", category="bags", price=30),
        alice.msg(127, "track", "Checkout Started"),
        alice.msg(128, "track", "Order Completed", order_id="o1", revenue=30,
                  products=[{"product_id": "p2", "category": "bags", "price": 30}]),
        bob.msg(0, "page"),
        *[bob.msg(m, "track", "Product Viewed", product_id="p9", category="watches") for m in (1, 2, 3)],
        bob.msg(50, "page"),
        carol.msg(0, "track", "Product Viewed", product_id="p5", category="toys", context={"sessionId": "s-1"}),
        carol.msg(100, "track", "Product Viewed", product_id="p5", category="toys", context={"sessionId": "s-1"}),
        carol.msg(101, "track", "Product Added", product_id="p5", category="toys", price=8,
                  context={"sessionId": "s-1"}),
        carol.msg(102, "track", "Order Completed", order_id="o2", revenue=8, context={"sessionId": "s-1"}),
        carol.msg(200, "page", context={"sessionId": "s-2"}),
    ]
    late = [alice.msg(40, "page"), bob.msg(25, "page")]  # out of order, within the lateness bound
    return messages, late


def test_sessions_windows_funnels_and_triggers(collector, write_key, engine, start_process, test_settings):
    start_process("worker", **WORKER)
    messages, late = scenario()
    clock = clock_messages(test_settings.topic_partitions, at(3 * 1440))
    client = CollectorClient(collector, write_key)
    for batch in (messages, late, clock):
        assert client.send_batch(batch)[0] == 200
    assert client.send_batch(messages[:3])[0] == 200  # a client retry: changes nothing
    client.close()
    total = len(messages) + len(late) + len(clock)

    def query(sql: str) -> list:
        with engine.connect() as conn:
            return [r._mapping for r in conn.execute(text(sql))]

    win_backs = {"alice": at(128), "bob": at(50), "carol": at(200)}
    expected_triggers = {
        f"cart_abandonment:alice:{stamp(at(10))}": at(70),
        f"browse_abandonment:bob:p9@{stamp(at(1))}": at(33),
        **{f"win_back:{user}:{stamp(last)}": last + timedelta(days=1) for user, last in win_backs.items()},
    }
    wait_until(lambda: len(query("SELECT 1 FROM behaviour_triggers")) >= len(expected_triggers)
               and query("SELECT count(*) AS n FROM events")[0]["n"] == total, 90, "triggers to be recorded")

    # --- behaviour_triggers: each episode once, fired at its deadline (event time) --------------
    triggers = {r["trigger_id"]: r for r in query("SELECT * FROM behaviour_triggers")}
    assert {tid: r["fired_at"] for tid, r in triggers.items()} == expected_triggers
    cart = triggers[f"cart_abandonment:alice:{stamp(at(10))}"]
    assert (cart["kind"], cart["user_key"], cart["episode"]) == ("cart_abandonment", "alice", stamp(at(10)))
    assert cart["details"]["items"] == [{"product_id": "p1", "quantity": 1, "price": "20"}]
    assert cart["details"]["cart_value"] == "20"
    assert triggers[f"browse_abandonment:bob:p9@{stamp(at(1))}"]["details"]["views"] == 3

    # --- the same triggers on Kafka, as documented JSON ------------------------------------------
    consumer = KafkaConsumer(test_settings.triggers_topic, bootstrap_servers=test_settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None)
    on_kafka = [(record.key.decode(), orjson.loads(record.value)) for record in consumer]
    consumer.close()
    assert sorted(m["trigger_id"] for _, m in on_kafka) == sorted(expected_triggers)
    for key, message in on_kafka:
        row = triggers[message["trigger_id"]]
        assert key == message["user_key"] == row["user_key"]
        assert message["schema"] == "spoor.trigger/1"
        assert (message["kind"], message["episode"], message["details"]) == (row["kind"], row["episode"], row["details"])
        assert datetime.fromisoformat(message["fired_at"]) == row["fired_at"]

    # --- sessions --------------------------------------------------------------------------------
    sessions = {(r["user_key"], r["session_id"]): r for r in query(
        "SELECT * FROM sessions WHERE user_key NOT LIKE 'clock-%'")}
    ms = lambda minutes: f"t{int(at(minutes).timestamp() * 1000)}"  # noqa: E731
    assert set(sessions) == {("alice", ms(0)), ("alice", ms(120)), ("bob", ms(0)), ("carol", "s-1"),
                             ("carol", "s-2")}
    columns = ("started_at", "ended_at", "duration_s", "events", "page_views", "product_views", "cart_adds",
               "checkouts", "purchases", "revenue", "reached_cart", "reached_checkout", "reached_purchase",
               "entry_page", "referrer", "utm_source", "utm_campaign", "traffic_source", "view_categories",
               "cart_categories", "purchase_categories")
    expected = {
        ("alice", ms(0)): (at(0), at(40), 2400, 4, 2, 1, 1, 0, 0, 0, True, False, False, "https://shop.example/",
                           "https://www.google.com/search?q=boots", "google", "winter", "google",
                           ["shoes"], ["shoes"], []),
        ("alice", ms(120)): (at(120), at(128), 480, 5, 1, 1, 1, 1, 1, 30, True, True, True,
                             "https://shop.example/bags", "https://www.facebook.com/", None, None,
                             "www.facebook.com", ["bags"], ["bags"], ["bags"]),
        # The late event at minute 25 bridged the sessions of minutes 0-3 and 50.
        ("bob", ms(0)): (at(0), at(50), 3000, 6, 3, 3, 0, 0, 0, 0, False, False, False, None, None, None, None,
                         "direct", ["watches"], [], []),
        # A client session id holds events 100 minutes apart together.
        ("carol", "s-1"): (at(0), at(102), 6120, 4, 0, 2, 1, 0, 1, 8, True, False, True, None, None, None, None,
                           "direct", ["toys"], ["toys"], []),
        ("carol", "s-2"): (at(200), at(200), 0, 1, 1, 0, 0, 0, 0, 0, False, False, False, None, None, None, None,
                           "direct", [], [], []),
    }
    for key, want in expected.items():
        got = tuple(sessions[key][c] for c in columns)
        assert got == want, f"{key}: {dict(zip(columns, got))}"

    # --- funnels (views a BI tool reads) -------------------------------------------------------
    day = query(f"SELECT * FROM funnel_daily WHERE day = '{B.date()}'")[0]
    assert (day["sessions"], day["viewed"], day["carted"], day["checked_out"], day["purchased"]) == (5, 4, 3, 1, 2)
    assert (day["view_to_cart"], day["view_to_purchase"], day["cart_abandonment_rate"]) == (
        Decimal("0.7500"), Decimal("0.5000"), Decimal("0.3333"))
    by_source = {r["traffic_source"]: (r["sessions"], r["purchased"]) for r in query(
        f"SELECT * FROM funnel_daily_by_source WHERE day = '{B.date()}'")}
    assert by_source == {"google": (1, 0), "www.facebook.com": (1, 1), "direct": (3, 1)}
    by_category = {r["category"]: (r["viewed"], r["carted"], r["checked_out"], r["purchased"]) for r in query(
        f"SELECT * FROM funnel_daily_by_category WHERE day = '{B.date()}'")}
    assert by_category == {"shoes": (1, 1, 0, 0), "bags": (1, 1, 1, 1), "watches": (1, 0, 0, 0), "toys": (1, 1, 0, 0)}

    # --- rolling windows, RFM inputs, lifecycle ------------------------------------------------
    alice = query("SELECT * FROM user_activity WHERE user_key = 'alice'")[0]
    assert alice["as_of"] == at(128)
    assert (alice["page_views_1d"], alice["product_views_7d"], alice["cart_adds_30d"], alice["checkouts_1d"],
            alice["purchases_30d"], alice["revenue_1d"], alice["revenue_30d"]) == (3, 2, 2, 1, 1, 30, 30)
    assert (alice["frequency"], alice["monetary"], alice["recency_days"], alice["last_purchase_at"]) == (
        1, 30, 0, at(128))
    assert (alice["favourite_category"], alice["favourite_categories"]) == ("bags", ["bags", "shoes"])
    assert alice["lifecycle_stage"] == "new"
    assert len(query("SELECT 1 FROM user_activity")) == 3 + len(clock)
