"""Data set rows -> Segment-spec messages, and those messages through the collector's normalisation."""

from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest

from spoor.cli.replay import (
    HEADERS,
    MAX_EVENT_BYTES,
    Format,
    ReplayError,
    Tally,
    detect_format,
    online_retail_messages,
    rees46_messages,
)
from spoor.events import EventKind
from spoor.ingest.normalize import normalize

RECEIVED = datetime(2026, 1, 1, tzinfo=timezone.utc)


def retail(*lines: str) -> list[tuple[int, dict]]:
    columns = HEADERS[Format.ONLINE_RETAIL]
    return [(n, dict(zip(columns, line.split(",")))) for n, line in enumerate(lines, start=2)]


def rees(*lines: str) -> list[tuple[int, dict]]:
    columns = HEADERS[Format.REES46]
    return [(n, dict(zip(columns, line.split(",")))) for n, line in enumerate(lines, start=2)]


def as_event(message: dict):
    """What the collector makes of the message, received much later than it happened."""
    return normalize(orjson.loads(orjson.dumps(message)), received_at=RECEIVED, source="replay")


def test_format_is_known_by_its_header():
    assert detect_format(HEADERS[Format.ONLINE_RETAIL]) == Format.ONLINE_RETAIL
    assert detect_format(["\ufeffevent_time", *HEADERS[Format.REES46][1:]]) == Format.REES46
    with pytest.raises(ReplayError, match="unknown CSV header"):
        detect_format(["a", "b"])


def test_invoice_becomes_one_order_with_its_products_revenue_and_first_line_time():
    tally = Tally()
    [message] = online_retail_messages(retail(
        "536591,85123A,HEART,6,2010-12-01 16:58:00,2.55,17850.0,United Kingdom",
        "536591,71053,LANTERN,3,2010-12-01 16:57:00,3.385,17850.0,United Kingdom",
    ), tally)
    assert message["userId"] == "17850" and "anonymousId" not in message
    assert message["messageId"] == "online-retail-536591"
    event = as_event(message)
    assert event.kind == EventKind.PURCHASE and event.name == "Order Completed"
    assert event.order_id == "536591" and event.currency == "GBP"
    assert event.revenue == Decimal("6") * Decimal("2.55") + Decimal("3") * Decimal("3.385")
    assert [(p.product_id, p.price, p.quantity) for p in event.products] == [
        ("85123A", Decimal("2.55"), 6), ("71053", Decimal("3.385"), 3)]
    # Original time kept: no sentAt, so no clock-skew correction toward the time of the replay.
    assert event.event_time == datetime(2010, 12, 1, 16, 57, tzinfo=timezone.utc)
    assert tally.events == {"Order Completed": 1} and not tally.skipped


def test_cancellation_becomes_a_refund_of_the_positive_amount():
    tally = Tally()
    [message] = online_retail_messages(retail(
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527.0,United Kingdom",
        "C536379,22556,CLOCK,-2,2010-12-01 09:41:00,1.65,14527.0,United Kingdom",
    ), tally)
    event = as_event(message)
    assert (event.kind, event.name, event.user_key) == (EventKind.REFUND, "Order Refunded", "14527")
    assert event.order_id == "C536379" and event.revenue == Decimal("30.80")
    assert tally.events == {"Order Refunded": 1}


def test_guest_invoice_gets_its_own_anonymous_id_and_is_counted():
    tally = Tally()
    [message] = online_retail_messages(retail(
        "536414,22139,,56,2010-12-01 11:52:00,0,,United Kingdom"), tally)
    assert message["anonymousId"] == "guest-536414" and "userId" not in message
    assert as_event(message).revenue == 0
    assert tally.guests == 1


def test_rows_that_cannot_be_mapped_are_counted_with_reason_and_line():
    tally = Tally()
    messages = online_retail_messages(retail(
        "536000,A,OK,1,2010-12-01 10:00:00,1.00,12345.0,UK",
        "536001,B,damaged,-5,2010-12-01 10:00:00,0,,UK",
        "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,UK",
        "536000,C,OTHER BUYER,1,2010-12-01 10:00:00,1.00,99999.0,UK",
        "536002,D,BAD,x,2010-12-01 10:00:00,1.00,12345.0,UK",
        "536003,E,BAD,1,2010-12-01 10:00:00,-1.00,12345.0,UK",
        "536004,F,BAD,1,yesterday,1.00,12345.0,UK",
        "536005,G,BAD,1,2010-12-01 10:00:00,1.00,12345.5,UK",
        "C536006,H,BAD,3,2010-12-01 10:00:00,1.00,12345.0,UK",
    ), tally)
    assert [m["messageId"] for m in messages] == ["online-retail-536000"]
    assert as_event(messages[0]).revenue == Decimal("1.00")
    assert tally.skipped == {
        "stock adjustment: Quantity <= 0 on an invoice": 1,
        "InvoiceNo is neither an invoice (digits) nor a cancellation (C + digits)": 1,
        "CustomerID differs from the invoice's first line": 1,
        "Quantity is not a whole number": 1,
        "UnitPrice is negative or not finite": 1,
        "InvoiceDate is not a date and time": 1,
        "CustomerID is not a positive whole number": 1,
        "Quantity >= 0 on a cancellation": 1,
    }
    assert tally.skipped_lines["stock adjustment: Quantity <= 0 on an invoice"] == [3]


def test_original_uci_date_format_is_read_too():
    [message] = online_retail_messages(retail("536365,A,X,1,12/1/2010 8:26,2.55,17850.0,UK"), Tally())
    assert message["timestamp"] == "2010-12-01T08:26:00Z"


def test_huge_invoice_keeps_its_exact_revenue_when_its_product_list_is_cut():
    lines = [f"540000,SKU{i:05d},X,{i + 1},2011-01-01 10:00:00,1.25,12345.0,UK" for i in range(1500)]
    tally = Tally()
    [message] = online_retail_messages(retail(*lines), tally)
    assert len(orjson.dumps(message)) <= MAX_EVENT_BYTES
    assert 0 < len(message["properties"]["products"]) < 1500
    assert tally.truncated_products == 1
    assert as_event(message).revenue == sum(Decimal("1.25") * (i + 1) for i in range(1500))


def test_rees46_rows_map_to_ecommerce_events_with_session_and_time():
    tally = Tally()
    messages = list(rees46_messages(rees(
        "2019-10-01 00:00:01 UTC,view,1307067,2053,computers.notebook,lenovo,251.74,550050854,s-1",
        "2019-10-01 00:01:00 UTC,cart,1307067,2053,computers.notebook,lenovo,251.74,550050854,s-1",
        "2019-10-01 00:02:00 UTC,remove_from_cart,1307067,2053,,,251.74,550050854,s-1",
        "2019-10-01 00:03:00 UTC,purchase,1307067,2053,computers.notebook,lenovo,251.74,550050854,s-1",
        "2019-10-01 00:04:00 UTC,wishlist,1307067,2053,,,1.00,550050854,s-1",
    ), tally))
    events = [as_event(m) for m in messages]
    assert [e.kind for e in events] == [EventKind.PRODUCT_VIEW, EventKind.CART_ADD, EventKind.CART_REMOVE,
                                        EventKind.PURCHASE]
    assert all(m["context"] == {"sessionId": "s-1"} and m["userId"] == "550050854" for m in messages)
    view, cart, _, purchase = events
    assert (view.product_id, view.price, view.category) == ("1307067", Decimal("251.74"), "computers.notebook")
    assert view.event_time == datetime(2019, 10, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert cart.quantity == 1
    assert purchase.revenue == Decimal("251.74") and purchase.order_id == messages[3]["messageId"]
    assert tally.events == {"Product Viewed": 1, "Product Added": 1, "Product Removed": 1, "Order Completed": 1}
    assert tally.skipped == {"event_type is not one of view, cart, remove_from_cart, purchase": 1}


def test_message_ids_are_deterministic_and_identical_rows_stay_distinct():
    row = "2019-10-01 00:00:01 UTC,view,1,2,,,1.00,7,s"
    first = [m["messageId"] for m in rees46_messages(rees(row, row), Tally())]
    again = [m["messageId"] for m in rees46_messages(rees(row, row), Tally())]
    assert first == again and len(set(first)) == 2
    assert first[1] == first[0] + "-2"
