"""Segment-spec messages -> canonical events."""

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from spoor.events import Event, EventKind, decode_record, encode_events
from spoor.ingest.normalize import InvalidEvent, normalize, repeated_id

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def track(event: str, **properties) -> dict:
    return {"type": "track", "userId": "u1", "messageId": "m1", "event": event, "properties": properties}


def norm(message: dict, received_at: datetime = RECEIVED, **kwargs) -> Event:
    return normalize(message, received_at=received_at, source="web", **kwargs)


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


# Three events as the pydantic-era collector (6331a74) wrote them to the events topic, enrichment included.
PYDANTIC_ERA_RECORD = (
    b'[{"event_id":"m1","kind":"purchase","name":"Order Completed","user_key":"u1","user_id":"u1","event_t'
    b'ime":"2024-05-01T11:59:58.250000Z","received_at":"2024-05-01T12:00:00Z","source":"web","order_id":"o'
    b'1","revenue":"25.5","currency":"EUR","products":[{"product_id":"p1","category":"mugs","price":"12.50'
    b'"},{"product_id":"7","price":"13"}],"page_url":"https://shop.example/checkout","referrer":"https://m'
    b'ail.example/","session_id":"1712345678","utm_source":"newsletter","utm_campaign":"spring","utm_mediu'
    b'm":"email","browser":"Firefox","browser_version":"126.0","os":"Linux","device":"Other","is_bot":fals'
    b'e,"anonymized_ip":"203.0.113.0","consent":"analytics"},{"event_id":"m2","kind":"page_view","name":"H'
    b'ome","user_key":"a1","anonymous_id":"a1","event_time":"2024-05-01T12:00:00Z","received_at":"2024-05-'
    b'01T12:00:00Z","source":"web","page_url":"https://shop.example/","browser":"Firefox","browser_version'
    b'":"126.0","os":"Linux","device":"Other","is_bot":false,"anonymized_ip":"203.0.113.0"},{"event_id":"m'
    b'3","kind":"custom","name":"Products Searched","user_key":"u1","user_id":"u1","event_time":"2024-05-0'
    b'1T12:00:00Z","received_at":"2024-05-01T12:00:00Z","source":"web","search_query":"blue mug","result_c'
    b'ount":3,"browser":"Firefox","browser_version":"126.0","os":"Linux","device":"Other","is_bot":false,"'
    b'anonymized_ip":"203.0.113.0"}]'
)
ENRICHMENT = {"browser": "Firefox", "browser_version": "126.0", "os": "Linux", "device": "Other", "is_bot": False,
              "anonymized_ip": "203.0.113.0"}


def test_records_on_the_topic_read_and_write_as_before_both_ways():
    """The events topic outlives a deploy: records written before the msgspec events are read alike, and
    the same messages give byte-identical records, so a worker not yet upgraded reads the new ones."""
    messages = [
        {"type": "track", "userId": "u1", "messageId": "m1", "event": "Order Completed",
          "timestamp": "2024-05-01T11:59:58.250Z",
          "context": {"page": {"url": "https://shop.example/checkout", "referrer": "https://mail.example/"},
                      "sessionId": 1712345678,
                      "campaign": {"source": "newsletter", "name": "spring", "medium": "email"},
                      "consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}},
          "properties": {"order_id": "o1", "currency": "eur", "revenue": 25.5, "products": [
              {"product_id": "p1", "category": "mugs", "price": "12.50", "quantity": 1},
              {"sku": 7, "price": 13, "quantity": 1}]}},
        {"type": "page", "anonymousId": "a1", "messageId": "m2", "name": "Home", "properties": {"url": "https://shop.example/"}},
        {"type": "track", "userId": "u1", "messageId": "m3", "event": "Products Searched",
          "properties": {"query": "blue mug", "result_count": 3}},
    ]
    events = [norm(m, enrichment=ENRICHMENT) for m in messages]
    assert encode_events(events) == PYDANTIC_ERA_RECORD
    decoded = decode_record(PYDANTIC_ERA_RECORD)
    assert decoded == events
    order = decoded[0]
    assert (order.kind, order.revenue, order.consent, order.is_bot) == (
        EventKind.PURCHASE, Decimal("25.5"), "analytics", False)
    assert [(line.product_id, line.price, line.quantity) for line in order.products] == [
        ("p1", Decimal("12.50"), 1), ("7", Decimal("13"), 1)]
    assert order.event_time == datetime(2024, 5, 1, 11, 59, 58, 250000, tzinfo=timezone.utc)
    assert [decode_record(e.to_json()) for e in events] == [[e] for e in events]  # one event, as a backend sends it


def test_missing_message_id_gets_one_derived_from_the_content_that_a_retry_gets_again():
    """A retried message is the same event: the old uuid4 gave every attempt a new id (counted twice)."""
    message = {"type": "track", "userId": "u", "event": "Product Viewed", "timestamp": "2024-05-01T11:59:00Z",
               "properties": {"product_id": "P1", "price": 5}, "context": {"page": {"url": "https://s/p1"}}}
    first = norm({**message, "sentAt": "2024-05-01T11:59:01Z"})
    # The retry: sent later, with the key in the body, from another address, keys in another order.
    retry = norm({"writeKey": "k", **dict(reversed(list(message.items()))), "sentAt": "2024-05-01T12:05:00Z",
                  "context": {"ip": "203.0.113.9", "page": {"url": "https://s/p1"}}},
                 received_at=RECEIVED + timedelta(minutes=6))
    assert first.event_id == retry.event_id
    assert str(uuid.UUID(first.event_id)) == first.event_id
    # What the client did differs: another event.
    assert len({first.event_id, norm({**message, "timestamp": "2024-05-01T11:59:02Z"}).event_id,
                norm({**message, "properties": {"product_id": "P2", "price": 5}}).event_id,
                norm({**message, "userId": "v"}).event_id,
                norm({**message, "context": {"page": {"url": "https://s/p2"}}}).event_id,
                normalize(message, received_at=RECEIVED, source="ios").event_id}) == 6
    # A single-message endpoint's implied type is the type.
    assert norm({**message, "type": None}, default_type="track").event_id == first.event_id
    # A messageId is the id, and an empty one is none.
    assert norm({**message, "messageId": "m-1"}).event_id == "m-1"
    assert norm({**message, "messageId": ""}).event_id == first.event_id
    assert repeated_id(first.event_id, 1) != first.event_id == norm(message).event_id


def test_an_event_may_claim_a_time_at_most_max_future_s_after_its_receipt():
    """Without sentAt the timestamp was trusted as is: one request could claim the year 2099."""
    ahead = {**track("X"), "timestamp": "2099-01-01T00:00:00Z"}
    with pytest.raises(InvalidEvent) as err:
        norm(ahead)
    assert err.value.field == "timestamp" and "at most 300 s after its receipt" in err.value.reason
    assert norm({**track("X"), "timestamp": "2024-05-01T12:05:00Z"}).event_time == RECEIVED + timedelta(minutes=5)
    with pytest.raises(InvalidEvent, match="at most 300 s"):
        norm({**track("X"), "timestamp": "2024-05-01T12:05:01Z"})
    with pytest.raises(InvalidEvent, match="at most 60 s"):
        norm({**track("X"), "timestamp": "2024-05-01T12:01:01Z"}, max_future_s=60)
    # After the sentAt correction: a clock a day fast is fine, a time after the sending is not.
    skewed = {**track("X"), "timestamp": "2024-05-02T11:59:00Z", "sentAt": "2024-05-02T12:00:00Z"}
    assert norm(skewed).event_time == RECEIVED - timedelta(minutes=1)
    with pytest.raises(InvalidEvent, match="after the sentAt clock correction"):
        norm({**skewed, "timestamp": "2024-05-02T13:00:00Z"})
    with pytest.raises(InvalidEvent, match="at most 300 s"):
        norm({**track("X"), "timestamp": "2024-05-01T13:00:00Z"}, batch_sent_at="2024-05-01T12:00:00Z")
    # The 1970..2100 bounds stay.
    with pytest.raises(InvalidEvent, match="between 1970 and 2100"):
        norm({**track("X"), "timestamp": "1969-12-31T23:59:59Z"})


@pytest.mark.parametrize("message, field", [
    # Python values a replayed PostgreSQL row or a direct caller may hold (orjson never produces them).
    (track("Product Added", quantity=float("nan")), "properties.quantity"),
    (track("Product Added", quantity=float("inf")), "properties.quantity"),
    (track("Order Completed", products=[{"quantity": float("-inf")}]), "properties.products.0.quantity"),
    ({**track("X"), "userId": 10 ** 5000}, "userId"),
    (track("X", product_id=2 ** 64), "properties.product_id"),
    ({**track("X"), "context": {"sessionId": -2 ** 70}}, "context.sessionId"),
    (track("Product Added", price=10 ** 5000), "properties.price"),
    # What a JSON body can hold.
    (track("Product Added", quantity=1e308), "properties.quantity"),
    (track("Order Completed", revenue="1e400"), "properties.revenue"),
    (track("Order Completed", products=[{"price": "9e999999", "quantity": 10 ** 6}]), "properties.products"),
    ({**track("X"), "timestamp": "9999-12-31T23:59:59+14:00"}, "timestamp"),
    ({**track("X"), "timestamp": "0001-01-01"}, "timestamp"),
    ({**track("X"), "timestamp": "2024-05-01T12:00:00Z", "sentAt": "0001-01-01T00:00:00Z"}, "timestamp"),
    ({**track("X"), "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}, "timestamp"),
    ({**track("X"), "userId": 1.5}, "userId"),
])
def test_odd_values_are_invalid_events_not_crashes(message, field):
    with pytest.raises(InvalidEvent) as raised:
        norm(message)
    assert raised.value.field == field


def test_reasons_quote_offending_values_briefly():
    with pytest.raises(InvalidEvent) as raised:
        norm({**track("X"), "timestamp": "x" * 10_000})
    assert len(raised.value.reason) < 100
    with pytest.raises(InvalidEvent) as raised:
        norm({"type": ["t"] * 10_000, "userId": "u"})
    assert len(raised.value.reason) < 200


def test_session_id_and_campaign_come_from_the_context():
    message = {**track("Product Viewed"), "context": {
        "sessionId": 1712345678, "campaign": {"source": "newsletter", "name": "spring-sale", "medium": "email"},
        "page": {"url": "https://shop.example/p/1", "referrer": "https://mail.example/"}}}
    event = norm(message)
    assert (event.session_id, event.utm_source, event.utm_campaign) == ("1712345678", "newsletter", "spring-sale")
    assert event.utm_medium == "email"
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
