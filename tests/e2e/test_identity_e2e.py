"""One shopper, one profile (docs/identity.md): HTTP -> Kafka -> Faust -> PostgreSQL with anonymous
browsing, logins at checkout, two devices, an alias chain, a late anonymous event and a placeholder id.

Hand-made shoppers with fixed event times; every expected figure is worked out by hand from the
messages below with each shopper's ids joined first."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from spoor.cli.admin_api import user_view
from spoor.cli.collector_client import CollectorClient
from tests.support.event_clock import clock_messages
from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

B = datetime(2026, 2, 2, 9, 0, tzinfo=timezone.utc)
WORKER = {"cart_abandonment_delay_s": 3600, "browse_abandonment_delay_s": 86400, "browse_abandonment_views": 50,
          "win_back_after_days": 30, "trigger_lateness_s": 300}


def iso(minutes: float) -> str:
    return (B + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


class Device:
    """A browser: its anonymous id on every message, the user id too once someone logged in."""

    def __init__(self, anonymous_id: str):
        self.anonymous_id = anonymous_id
        self.user_id: str | None = None
        self.n = 0

    def msg(self, minutes: float, kind: str, event: str | None = None, **props) -> dict:
        self.n += 1
        message = {"type": kind, "anonymousId": self.anonymous_id, "messageId": f"{self.anonymous_id}-{self.n}",
                   "timestamp": iso(minutes), "properties": props}
        if self.user_id:
            message["userId"] = self.user_id
        if event:
            message["event"] = event
        return message

    def login(self, minutes: float, user_id: str) -> dict:
        self.user_id = user_id
        return self.msg(minutes, "identify")


def journeys() -> tuple[list[dict], list[dict]]:
    """(messages in order, a late message sent afterwards)."""
    ann = Device("a-ann")  # browses, logs in at checkout, buys
    ann_msgs = [ann.msg(0, "page"),
                ann.msg(1, "track", "Product Viewed", product_id="p1", category="shoes", price=20),
                ann.msg(2, "track", "Product Added", product_id="p1", category="shoes", price=20),
                ann.login(5, "ann"),
                ann.msg(6, "track", "Checkout Started"),
                ann.msg(7, "track", "Order Completed", order_id="o1", revenue=20)]
    phone, laptop = Device("a-ben-phone"), Device("a-ben-laptop")  # two devices, a cart left behind
    ben_msgs = [phone.msg(0, "page"),
                phone.msg(1, "track", "Product Viewed", product_id="p2", category="bags", price=30),
                laptop.msg(60, "page"),
                laptop.msg(61, "track", "Product Added", product_id="p2", category="bags", price=30),
                laptop.login(62, "ben"),
                phone.login(63, "ben")]
    cy = Device("a-cy")  # logs in under an old account id, which the shop then renames
    cy_msgs = [cy.msg(10, "page"),
               cy.login(11, "cy-old"),
               cy.msg(12, "track", "Order Completed", order_id="o3", revenue=15),
               {"type": "alias", "previousId": "cy-old", "userId": "cy", "messageId": "cy-alias",
                "timestamp": iso(20)},
               {"type": "page", "userId": "cy", "messageId": "cy-page", "timestamp": iso(21)}]
    kiosk = Device("null")  # a broken client's placeholder: never joined
    null_msgs = [kiosk.msg(30, "page"), kiosk.login(31, "dee"), kiosk.msg(32, "page")]
    late = [{"type": "page", "anonymousId": "a-cy", "messageId": "a-cy-late", "timestamp": iso(9)}]
    return ann_msgs + ben_msgs + cy_msgs + null_msgs, late


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return [r._mapping for r in conn.execute(text(sql), params)]


def test_anonymous_history_devices_and_aliases_join_one_profile(collector, write_key, engine, start_process,
                                                                test_settings):
    start_process("worker", **WORKER)
    messages, late = journeys()
    client = CollectorClient(collector, write_key)
    for message in messages:  # one request each: the order the shop's pages sent them in
        assert client.send_batch([message])[0] == 200
    merged = {"a-ann", "a-ben-phone", "a-ben-laptop", "a-cy", "cy-old"}
    # Before the clock moves past the cart deadlines: every anonymous state is its user's by then.
    merged_ids = "SELECT id FROM user_identities WHERE status = 'merged'"
    try:
        wait_until(lambda: merged <= {r["id"] for r in rows(engine, merged_ids)}, 90, "every shopper's ids to be merged")
    except AssertionError as err:
        raise AssertionError(f"{err}: identities {[dict(r) for r in rows(engine, 'SELECT * FROM user_identities')]}, "
                             f"profiles {[(r['user_key'], r['events']) for r in rows(engine, 'SELECT * FROM user_profiles')]}"
                             ) from None
    assert client.send_batch(late)[0] == 200
    assert client.send_batch(messages[:3])[0] == 200  # a client retry: changes nothing
    clock = clock_messages(test_settings.topic_partitions, B + timedelta(hours=3))  # cart deadlines pass
    assert client.send_batch(clock)[0] == 200
    client.close()
    clock_users = {m["userId"] for m in clock}
    want = {  # user: events, page_views, product_views, cart_adds, checkouts, orders, revenue
        "ann": (6, 1, 1, 1, 1, 1, Decimal(20)),
        "ben": (6, 2, 1, 1, 0, 0, Decimal(0)),
        "cy": (6, 3, 0, 0, 0, 1, Decimal(15)),
        "dee": (2, 1, 0, 0, 0, 0, Decimal(0)),  # its identify and the page after it
        "null": (1, 1, 0, 0, 0, 0, Decimal(0)),  # the placeholder's own page before the login
    }

    def profiles() -> dict:
        return {r["user_key"]: (r["events"], r["page_views"], r["product_views"], r["cart_adds"], r["checkouts"],
                                r["orders"], r["revenue"])
                for r in rows(engine, "SELECT * FROM user_profiles") if r["user_key"] not in clock_users}

    try:
        wait_until(lambda: profiles() == want, 90, "one profile per shopper")
    except AssertionError as err:
        raise AssertionError(f"{err}: {profiles()}") from None

    total = len(messages) + len(late) + len(clock)
    assert rows(engine, "SELECT count(*) AS n FROM events")[0]["n"] == total
    keys = {r["user_key"] for r in rows(engine, "SELECT DISTINCT user_key FROM events")} - clock_users
    assert keys == set(want), "every event is on its shopper's one profile"
    sessions = {}
    for r in rows(engine, "SELECT * FROM sessions ORDER BY started_at"):
        sessions.setdefault(r["user_key"], []).append((r["events"], r["reached_cart"], r["reached_purchase"]))
    assert sessions["ann"] == [(6, True, True)]
    assert sessions["ben"] == [(2, False, False), (4, True, False)]  # the phone, then the laptop + phone login
    assert sum(n for n, _cart, _bought in sessions["cy"]) == 6
    assert not merged & set(sessions)

    wait_until(lambda: rows(engine, "SELECT 1 FROM behaviour_triggers WHERE user_key = 'ben'"), 60,
               "ben's cart to be abandoned")
    triggers = {(r["user_key"], r["kind"]) for r in rows(engine, "SELECT * FROM behaviour_triggers")}
    assert triggers == {("ben", "cart_abandonment")}, "ann bought after logging in: no trigger for her"

    identities = {(r["id"], r["user_key"], r["status"]) for r in rows(engine, "SELECT * FROM user_identities")}
    assert {("a-ann", "ann", "merged"), ("a-ben-phone", "ben", "merged"), ("a-ben-laptop", "ben", "merged"),
            ("a-cy", "cy", "merged"), ("cy-old", "cy", "merged"), ("null", "dee", "refused")} <= identities
    shown = user_view(engine, "a-cy")
    assert shown["user_key"] == "cy" and {i["id"] for i in shown["ids"]} >= {"a-cy", "cy-old"}
