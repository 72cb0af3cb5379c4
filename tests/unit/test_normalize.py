"""Segment-spec messages -> canonical events."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ingest.normalize import InvalidEvent, normalize
from pydantic import ValidationError

from spoor.events import Event, EventKind, decode_record, encode_events

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def track(event: str, **properties) -> dict:
    return {"type": "track", "userId": "u1", "messageId": "m1", "event": event, "properties": properties}


def norm(message: dict, **kwargs) -> Event:
    return normalize(message, received_at=RECEIVED, source="web", **kwargs)


@pytest.mark.parametrize("name, kind", [
    ("Product Viewed", EventKind.PRODUCT_VIEW),
    ("Product Clicked", EventKind.CLICK),
    ("Product Added", EventKind.CART_ADD),
    ("product_removed", EventKind.CART_REMOVE),
    ("Checkout Started", EventKind.CHECKOUT),
    ("Order Completed", EventKind.PURCHASE),
    ("Order Refunded", EventKind.REFUND),
    ("Newsletter Signed Up", EventKind.CUSTOM),
])
def test_ecommerce_spec_names_map_to_kinds(name, kind):
    assert norm(track(name)).kind == kind


def test_message_types_map_to_kinds():
    assert norm({"type": "page", "anonymousId": "a1", "name": "Home"}).kind == EventKind.PAGE_VIEW
    assert norm({"type": "screen", "anonymousId": "a1", "name": "Cart"}).kind == EventKind.PAGE_VIEW
    assert norm({"type": "identify", "userId": "u1", "traits": {"email": "x@y"}}).kind == EventKind.IDENTIFY


def test_user_key_prefers_user_id_then_anonymous_id():
    assert norm({"type": "page", "userId": "u1", "anonymousId": "a1"}).user_key == "u1"
    assert norm({"type": "page", "anonymousId": "a1"}).user_key == "a1"
    assert norm({"type": "page", "userId": 17850}).user_key == "17850"


def test_event_time_corrects_client_clock_skew():
    # The client's clock is one hour fast: it stamped the event 10 s before sending.
    message = {**track("Product Viewed"), "timestamp": "2024-05-01T13:00:00Z", "sentAt": "2024-05-01T13:00:10Z"}
    assert norm(message).event_time == RECEIVED - timedelta(seconds=10)


def test_batch_level_sent_at_is_used_for_messages_without_their_own():
    message = {**track("Product Viewed"), "timestamp": "2024-05-01T13:00:00Z"}
    event = norm(message, batch_sent_at="2024-05-01T13:00:30Z")
    assert event.event_time == RECEIVED - timedelta(seconds=30)


def test_event_time_without_sent_at_trusts_timestamp_and_without_timestamp_is_receipt():
    assert norm({**track("X"), "timestamp": "2024-04-30T08:00:00"}).event_time == \
        datetime(2024, 4, 30, 8, tzinfo=timezone.utc)
    assert norm(track("X")).event_time == RECEIVED


def test_typed_commerce_properties():
    event = norm(track("Product Added", product_id="P1", category="shoes", price="19.99", quantity=2,
                       currency="eur"))
    assert (event.product_id, event.category, event.price, event.quantity, event.currency) == \
        ("P1", "shoes", Decimal("19.99"), 2, "EUR")
    assert norm(track("Product Added", sku="S1")).product_id == "S1"
    assert norm(track("Product Added", product_id="P1")).quantity == 1


def test_order_revenue_from_revenue_total_or_products():
    assert norm(track("Order Completed", order_id="o", revenue=10.5, total=99)).revenue == Decimal("10.5")
    assert norm(track("Order Completed", order_id="o", total=12)).revenue == Decimal("12")
    products = [{"product_id": "a", "price": 2.5, "quantity": 2}, {"product_id": "b", "price": 1}]
    event = norm(track("Order Completed", order_id="o", products=products))
    assert event.revenue == Decimal("6.0")
    assert [line.product_id for line in event.products] == ["a", "b"]


def test_refund_amount_is_its_total_kept_positive():
    event = norm(track("Order Refunded", order_id="o", total=12.5, products=[{"product_id": "a", "price": 12.5}]))
    assert (event.kind, event.order_id, event.revenue, len(event.products)) == (EventKind.REFUND, "o", Decimal("12.5"), 1)
    assert norm(track("Order Refunded", order_id="o")).revenue == 0


@pytest.mark.parametrize("message, field", [
    ({"type": "track", "messageId": "m", "event": "X"}, "userId"),
    ({"type": "track", "userId": "u"}, "event"),
    ({"type": "launch", "userId": "u"}, "type"),
    (track("Product Added", price=-1), "properties.price"),
    (track("Product Added", price="cheap"), "properties.price"),
    (track("Product Added", quantity=1.5), "properties.quantity"),
    (track("Order Completed", products="many"), "properties.products"),
    (track("Order Completed", products=[{"price": -2}]), "properties.products.0.price"),
    (track("Order Completed", currency="euro"), "properties.currency"),
    ({**track("X"), "timestamp": "yesterday"}, "timestamp"),
    ({**track("X"), "properties": [1, 2]}, "properties"),
    ("not an object", "$"),
])
def test_invalid_messages_name_the_field(message, field):
    with pytest.raises(InvalidEvent) as raised:
        norm(message)
    assert raised.value.field == field
    assert raised.value.reason


def test_identify_traits_are_not_carried_into_the_event():
    event = norm({"type": "identify", "userId": "u1", "traits": {"email": "someone@example.com"}})
    assert b"someone@example.com" not in event.to_json()


def test_canonical_json_round_trips():
    event = norm(track("Order Completed", order_id="o", products=[{"product_id": "a", "price": "2.10"}]))
    assert Event.from_json(event.to_json()) == event


def test_missing_message_id_gets_a_generated_one():
    first = norm({"type": "page", "userId": "u"})
    second = norm({"type": "page", "userId": "u"})
    assert first.event_id and first.event_id != second.event_id


def test_session_id_and_campaign_come_from_the_context():
    message = {**track("Product Viewed"), "context": {
        "sessionId": 1712345678, "campaign": {"source": "newsletter", "name": "spring-sale", "medium": "email"},
        "page": {"url": "https://shop.example/p/1", "referrer": "https://mail.example/"}}}
    event = norm(message)
    assert (event.session_id, event.utm_source, event.utm_campaign) == ("1712345678", "newsletter", "spring-sale")
    assert (event.page_url, event.referrer) == ("https://shop.example/p/1", "https://mail.example/")
    with pytest.raises(InvalidEvent) as err:
        norm({**track("Product Viewed"), "context": {"sessionId": {"nested": 1}}})
    assert err.value.field == "context.sessionId"


def test_decoding_still_rejects_nul_characters_escaped_or_not():
    event = Event(event_id="e1", kind=EventKind("page_view"), name="Home", user_key="u1",
                  event_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
                  received_at=datetime(2024, 1, 1, tzinfo=timezone.utc), source="web")
    clean = encode_events([event, event.model_copy(update={"event_id": "e2"})])
    assert [e.event_id for e in decode_record(clean)] == ["e1", "e2"]
    poisoned = clean.replace(b'"Home"', b'"Ho\\u0000me"', 1)  # what a backend writing directly could send
    with pytest.raises(ValidationError, match="NUL"):
        decode_record(poisoned)
    with pytest.raises(ValidationError, match="NUL"):
        decode_record(event.model_copy(update={"name": "a\x00b"}).to_json())
