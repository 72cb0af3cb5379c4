"""The per-user fold: exact counts, dedupe, cart value, purchases."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson

from spoor.events import Event, EventKind
from spoor.stream_processors.profile import UserProfile

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def event(event_id: str, kind: EventKind, minute: int = 0, **fields) -> Event:
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key="u1", event_time=T0 + timedelta(minutes=minute),
                 received_at=T0, **fields)


def fold(*events: Event, window: int = 100) -> UserProfile:
    profile = UserProfile("u1")
    for e in events:
        profile.apply(e, window)
    return profile


def test_counts_per_kind_and_time_bounds_ignore_arrival_order():
    profile = fold(
        event("1", EventKind.PAGE_VIEW, 5),
        event("2", EventKind.PRODUCT_VIEW, 1, product_id="a"),
        event("3", EventKind.PRODUCT_VIEW, 9, product_id="a"),
        event("4", EventKind.PRODUCT_VIEW, 3, product_id="b"),
        event("5", EventKind.CLICK, 2),
    )
    row = profile.row()
    assert (row["events"], row["page_views"], row["product_views"], row["clicks"]) == (5, 1, 3, 1)
    assert row["distinct_products_viewed"] == 2
    assert row["first_seen_at"] == T0 + timedelta(minutes=1)
    assert row["last_seen_at"] == T0 + timedelta(minutes=9)


def test_duplicate_event_id_is_counted_once():
    profile = UserProfile("u1")
    assert profile.apply(event("1", EventKind.PAGE_VIEW), 10) is True
    assert profile.apply(event("1", EventKind.PAGE_VIEW), 10) is False
    assert profile.events == 1


def test_dedupe_window_is_bounded():
    profile = fold(*[event(str(i), EventKind.PAGE_VIEW) for i in range(5)], window=3)
    assert list(profile.recent_event_ids) == ["2", "3", "4"]
    assert profile.apply(event("0", EventKind.PAGE_VIEW), 3) is True  # forgotten: documented limit


def test_cart_value_follows_adds_removes_and_purchase():
    profile = fold(
        event("1", EventKind.CART_ADD, product_id="a", price=Decimal("10"), quantity=2),
        event("2", EventKind.CART_ADD, product_id="b", price=Decimal("5.5"), quantity=1),
        event("3", EventKind.CART_REMOVE, product_id="a", quantity=1),
        event("4", EventKind.CART_REMOVE, product_id="zzz", quantity=1),
    )
    assert profile.cart_value == Decimal("15.5")
    assert (profile.cart_adds, profile.cart_removes) == (2, 2)
    profile.apply(event("5", EventKind.PURCHASE, 30, order_id="o1", revenue=Decimal("15.5")), 100)
    assert profile.cart_value == 0
    assert (profile.orders, profile.revenue) == (1, Decimal("15.5"))
    assert profile.first_purchase_at == profile.last_purchase_at == T0 + timedelta(minutes=30)


def test_encode_decode_round_trip_keeps_everything():
    profile = fold(
        event("1", EventKind.PRODUCT_VIEW, product_id="a", user_id="u1"),
        event("2", EventKind.CART_ADD, 1, product_id="a", price=Decimal("3.25"), quantity=2),
        event("3", EventKind.PURCHASE, 2, order_id="o", revenue=Decimal("6.50")),
        event("4", EventKind.CART_ADD, 3, product_id="b", price=Decimal("1"), quantity=1),
    )
    restored = UserProfile.decode(profile.encode())
    assert restored.row() == profile.row()
    assert restored.recent_event_ids == profile.recent_event_ids
    assert restored.apply(event("4", EventKind.CART_ADD), 100) is False


def test_orders_are_distinct_order_ids_and_revenue_is_net_of_refunds():
    profile = fold(
        event("1", EventKind.PURCHASE, 10, order_id="o1", revenue=Decimal("40")),
        event("2", EventKind.PURCHASE, 20, order_id="o1", revenue=Decimal("40")),  # the same order, re-sent
        event("3", EventKind.PURCHASE, 5, order_id="o2", revenue=Decimal("2.5")),
        event("4", EventKind.REFUND, 30, order_id="C9", revenue=Decimal("12.25")),
        event("5", EventKind.PURCHASE, 40, revenue=Decimal("1")),  # no order id: an order of its own
    )
    assert (profile.events, profile.orders, profile.revenue) == (5, 3, Decimal("31.25"))
    assert profile.first_purchase_at == T0 + timedelta(minutes=5)
    assert profile.last_purchase_at == T0 + timedelta(minutes=40)  # a refund is not a purchase


def test_refund_before_any_order_makes_revenue_negative():
    profile = fold(event("1", EventKind.REFUND, order_id="C1", revenue=Decimal("3")))
    assert (profile.orders, profile.revenue, profile.last_purchase_at) == (0, Decimal("-3"), None)


def test_order_ids_survive_encode_decode_and_older_states_decode():
    profile = fold(event("1", EventKind.PURCHASE, order_id="o1", revenue=Decimal("5")))
    restored = UserProfile.decode(profile.encode())
    assert restored.apply(event("2", EventKind.PURCHASE, order_id="o1", revenue=Decimal("5")), 100) is True
    assert (restored.orders, restored.revenue) == (1, Decimal("5"))
    older = orjson.loads(profile.encode())
    del older["recent_order_ids"]
    assert UserProfile.decode(orjson.dumps(older)).orders == 1
