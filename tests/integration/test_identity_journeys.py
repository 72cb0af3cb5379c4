"""Simulated shoppers who browse anonymously, log in at checkout, come back on a second device, and
send a late anonymous event, through the real stack with the worker SIGKILLed halfway: every
profile, session and funnel step equals an independent computation over the same messages with each
shopper's ids joined first (docs/identity.md). Joins are exactly once across the crash."""

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.cli.simulate import simulate
from tests.support.local_stack import wait_until

pytestmark = pytest.mark.integration

KIND_OF = {"Product Viewed": "product_views", "Product Clicked": "clicks", "Product Added": "cart_adds",
           "Product Removed": "cart_removes", "Checkout Started": "checkouts", "Order Completed": "orders"}
COUNTS = ["events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts", "orders"]
INACTIVITY = timedelta(minutes=30)  # SPOOR_SESSION_INACTIVITY_S's default


def journeys() -> tuple[list[dict], list[dict]]:
    """(messages in time order, late anonymous messages sent at the end)."""
    messages = simulate(users=300, seed=21, login_at_checkout=True)
    logins = [m for m in messages if m["type"] == "identify"]
    extra, late = [], []
    for n, login in enumerate(logins):
        user, at = login["userId"], datetime.fromisoformat(login["timestamp"])
        if n % 3 == 0:  # an earlier visit on another device, which logs in after the checkout
            device = {"anonymousId": f"phone-{user}"}
            extra += [{"type": "page", **device, "messageId": f"{user}-p1",
                       "timestamp": (at - timedelta(minutes=90)).isoformat()},
                      {"type": "track", "event": "Product Viewed", **device, "messageId": f"{user}-p2",
                       "timestamp": (at - timedelta(minutes=89)).isoformat(),
                       "properties": {"product_id": "P0001", "category": "shoes", "price": 10}},
                      {"type": "identify", "userId": user, **device, "messageId": f"{user}-p3",
                       "timestamp": (at + timedelta(minutes=1)).isoformat()}]
        if n % 4 == 0:  # an anonymous event from before the login that reaches the collector last
            late.append({"type": "page", "anonymousId": login["anonymousId"], "messageId": f"{user}-late",
                         "timestamp": (at - timedelta(seconds=1)).isoformat()})
    return sorted(messages + extra, key=lambda m: m["timestamp"]), late


def joined_truth(messages: list[dict]) -> tuple[dict, dict]:
    """Independent of the worker: (per shopper counts and revenue, per shopper sessions as
    [events, reached cart, reached purchase]), ids joined first."""
    user_of = {m["anonymousId"]: m["userId"] for m in messages if m.get("userId") and m.get("anonymousId")}
    by_user = defaultdict(list)
    for m in {m["messageId"]: m for m in messages}.values():
        by_user[m.get("userId") or user_of.get(m["anonymousId"], m["anonymousId"])].append(m)
    profiles, sessions = {}, {}
    for user, ms in by_user.items():
        counts = dict.fromkeys(COUNTS, 0)
        revenue, orders = Decimal(0), set()
        for m in ms:
            counts["events"] += 1
            if m["type"] == "page":
                counts["page_views"] += 1
            elif m["type"] == "track":
                counts[KIND_OF[m["event"]]] += 1
                if m["event"] == "Order Completed" and m["properties"]["order_id"] not in orders:
                    orders.add(m["properties"]["order_id"])
                    revenue += Decimal(str(m["properties"]["revenue"]))
        profiles[user] = {**counts, "orders": len(orders), "revenue": revenue}
        visits, last = [], None
        for m in sorted(ms, key=lambda m: m["timestamp"]):
            at = datetime.fromisoformat(m["timestamp"])
            if last is None or at - last > INACTIVITY:
                visits.append([0, False, False])
            visits[-1][0] += 1
            visits[-1][1] |= m.get("event") == "Product Added"
            visits[-1][2] |= m.get("event") == "Order Completed"
            last = at
        sessions[user] = sorted(visits)
    return profiles, sessions


def test_joined_shoppers_survive_a_worker_kill_exactly_once(collector, write_key, engine, start_process):
    messages, late = journeys()
    client = CollectorClient(collector, write_key)
    batches = [messages[i:i + 50] for i in range(0, len(messages), 50)]
    for batch in batches:
        assert client.send_batch(batch)[0] == 200
    for batch in batches[::6]:  # client retries
        assert client.send_batch(batch)[0] == 200
    total = len(messages) + len(late)

    def persisted() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM events")).scalar()

    first = start_process("worker", worker_batch_max=40)
    wait_until(lambda: persisted() >= len(messages) // 3, 90, "the worker to be a third through", interval=0.05)
    first.kill()  # merges, links and forwarded events are in flight
    start_process("worker", worker_batch_max=40)
    wait_until(lambda: persisted() == len(messages), 150, "the restarted worker to catch up")
    assert client.send_batch(late)[0] == 200
    client.close()
    wait_until(lambda: persisted() == total, 60, "the late events")

    want_profiles, want_sessions = joined_truth(messages + late)
    assert len(want_profiles) < len({m.get("anonymousId") or m["userId"] for m in messages}), "ids to join"

    def differences() -> list:
        with engine.connect() as conn:
            rows = {r.user_key: r._mapping for r in conn.execute(text("SELECT * FROM user_profiles"))}
        wrong = [user for user, want in want_profiles.items()
                 if user not in rows or any(rows[user][c] != want[c] for c in COUNTS + ["revenue"])]
        return wrong + sorted(set(rows) - set(want_profiles))

    try:
        wait_until(lambda: not differences(), 90, "every profile to equal the joined computation")
    except AssertionError as err:
        wrong = differences()[:5]
        with engine.connect() as conn:
            got = {r.user_key: {c: r._mapping[c] for c in COUNTS + ["revenue"]}
                   for r in conn.execute(text("SELECT * FROM user_profiles WHERE user_key = ANY(:k)"), {"k": wrong})}
        raise AssertionError(f"{err}: {[(u, want_profiles.get(u), got.get(u)) for u in wrong]}") from None
    with engine.connect() as conn:
        got = defaultdict(list)
        for r in conn.execute(text("SELECT user_key, events, reached_cart, reached_purchase FROM sessions")):
            got[r.user_key].append([r.events, r.reached_cart, r.reached_purchase])
        stray_events = conn.execute(text("SELECT count(*) FROM events WHERE NOT user_key = ANY(:keys)"),
                                    {"keys": list(want_profiles)}).scalar()
    assert {user: sorted(s) for user, s in got.items()} == want_sessions
    assert stray_events == 0
