"""Rows of a public e-commerce data set -> Segment-spec messages. Pure: no I/O.

Two formats, known by their CSV header:

- UCI Online Retail (``InvoiceNo,StockCode,...``): one ``Order Completed`` per
  invoice, one ``Order Refunded`` per cancellation (``InvoiceNo`` ``C...``).
- REES46 (``event_time,event_type,...``): one message per row.

Every message gets a deterministic ``messageId`` (a re-run is deduplicated by
the pipeline) and the row's original time as ``timestamp``, without ``sentAt``:
the collector then trusts the timestamp as is (no clock-skew correction, which
would move historical events to the time of the replay).

A row that cannot be mapped is never dropped silently: ``Tally.skip`` counts it
under its reason with the first line numbers, and the command prints them.
"""

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum

import orjson

from spoor.cli import CliError

# The collector's default per-event limit (SPOOR_MAX_EVENT_BYTES), Segment's own.
MAX_EVENT_BYTES = 32 * 1024
EXAMPLE_LINES = 5

Row = tuple[int, dict[str, str]]  # (line number in the file, the CSV row)


class ReplayError(CliError, ValueError):
    """The file as a whole cannot be replayed (unknown format)."""


class Format(StrEnum):
    ONLINE_RETAIL = "UCI Online Retail"
    REES46 = "REES46"


HEADERS = {
    Format.ONLINE_RETAIL: ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                           "UnitPrice", "CustomerID", "Country"],
    Format.REES46: ["event_time", "event_type", "product_id", "category_id", "category_code", "brand",
                    "price", "user_id", "user_session"],
}


def detect_format(header: list[str]) -> Format:
    columns = [name.strip().lstrip("\ufeff") for name in header]
    for fmt, expected in HEADERS.items():
        if columns == expected:
            return fmt
    known = "; ".join(f"{fmt}: {','.join(cols)}" for fmt, cols in HEADERS.items())
    raise ReplayError(f"unknown CSV header {','.join(columns)!r}; expected one of {known}")


@dataclass
class Tally:
    """What a replay sent and skipped, for the summary."""

    events: Counter = field(default_factory=Counter)  # event name -> messages mapped
    guests: int = 0  # Online Retail invoices without a CustomerID
    truncated_products: int = 0  # events whose product list was cut to fit MAX_EVENT_BYTES
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> first line numbers

    def skip(self, line: int, reason: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_lines.setdefault(reason, [])
        if len(examples) < EXAMPLE_LINES:
            examples.append(line)


class RowRejected(CliError, ValueError):
    """One row that cannot be mapped; the message is the reason shown to the user."""


# ---- UCI Online Retail ---------------------------------------------------------------------------

@dataclass
class Invoice:
    number: str
    customer: str | None
    time: datetime
    first_line: int
    lines: list[tuple[str, Decimal, int]] = field(default_factory=list)  # (StockCode, UnitPrice, units)

    @property
    def cancelled(self) -> bool:
        return self.number.startswith("C")

    @property
    def amount(self) -> Decimal:
        return sum((price * units for _, price, units in self.lines), Decimal(0))


def online_retail_messages(rows: Iterable[Row], tally: Tally) -> list[dict]:
    """One message per invoice, in the order of the invoices' first lines.

    An invoice's time is its earliest line's (a few span two minutes); a
    cancellation's lines carry negative quantities and become positive units
    refunded. Guests (no CustomerID) get ``anonymousId = guest-<InvoiceNo>``:
    the data cannot tell whether two guest invoices are the same person.
    """
    invoices: dict[str, Invoice] = {}
    for line, row in rows:
        try:
            number, customer, time, line_item = _invoice_line(row)
            invoice = invoices.get(number)
            if invoice is None:
                invoice = invoices[number] = Invoice(number, customer, time, line)
            elif invoice.customer != customer:
                raise RowRejected("CustomerID differs from the invoice's first line")
        except RowRejected as rejected:
            tally.skip(line, str(rejected))
            continue
        invoice.time = min(invoice.time, time)
        invoice.lines.append(line_item)
    messages = []
    for invoice in invoices.values():
        try:
            messages.append(_invoice_message(invoice))
        except RowRejected as rejected:
            for _ in invoice.lines:
                tally.skip(invoice.first_line, f"invoice {rejected}")
            continue
        tally.events[messages[-1]["event"]] += 1
        tally.guests += invoice.customer is None
        tally.truncated_products += _fit(messages[-1])
    return messages


def _invoice_line(row: dict[str, str]) -> tuple[str, str | None, datetime, tuple[str, Decimal, int]]:
    number = row["InvoiceNo"].strip()
    if not number[number.startswith("C"):].isdigit():
        raise RowRejected("InvoiceNo is neither an invoice (digits) nor a cancellation (C + digits)")
    stock_code = row["StockCode"].strip()
    if not stock_code:
        raise RowRejected("StockCode is empty")
    try:
        quantity = int(row["Quantity"])
    except ValueError:
        raise RowRejected("Quantity is not a whole number") from None
    if number.startswith("C") and quantity >= 0:
        raise RowRejected("Quantity >= 0 on a cancellation")
    if not number.startswith("C") and quantity <= 0:
        raise RowRejected("stock adjustment: Quantity <= 0 on an invoice")
    price = _decimal(row["UnitPrice"], "UnitPrice")
    return number, _customer_id(row["CustomerID"]), _shop_time(row["InvoiceDate"]), \
        (stock_code, price, abs(quantity))


def _customer_id(value: str) -> str | None:
    """``17850.0`` (how the data set writes it) -> ``17850``; empty -> None (a guest)."""
    value = value.strip()
    if not value:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise RowRejected("CustomerID is not a number") from None
    if not number.is_finite() or number != number.to_integral_value() or number <= 0:
        raise RowRejected("CustomerID is not a positive whole number")
    return str(int(number))


def _shop_time(value: str) -> datetime:
    """InvoiceDate is shop-local time without a zone; it is taken as UTC."""
    value = value.strip()
    for parse in (datetime.fromisoformat, lambda v: datetime.strptime(v, "%m/%d/%Y %H:%M")):
        try:
            parsed = parse(value)
        except ValueError:
            continue
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed
    raise RowRejected("InvoiceDate is not a date and time")


def _invoice_message(invoice: Invoice) -> dict:
    event = "Order Refunded" if invoice.cancelled else "Order Completed"
    amount_key = "total" if invoice.cancelled else "revenue"  # the Segment spec's names for each
    if invoice.customer is None:
        user = {"anonymousId": f"guest-{invoice.number}"}
    else:
        user = {"userId": invoice.customer}
    properties = {
        "order_id": invoice.number,
        amount_key: _number(invoice.amount),
        "currency": "GBP",
        "products": [{"sku": code, "price": _number(price), "quantity": units}
                     for code, price, units in invoice.lines],
    }
    return {"type": "track", "messageId": f"online-retail-{invoice.number}", "event": event, **user,
            "timestamp": _iso(invoice.time), "properties": properties}


# ---- REES46 --------------------------------------------------------------------------------------

REES46_EVENTS = {"view": "Product Viewed", "cart": "Product Added",
                 "remove_from_cart": "Product Removed", "purchase": "Order Completed"}


def rees46_messages(rows: Iterable[Row], tally: Tally) -> Iterator[dict]:
    """One message per row, streamed (the full data set has tens of millions of rows).

    The row's ``user_session`` travels as ``context.sessionId``. A purchase row
    is one order of one product (the data set has no order id), so its
    ``order_id`` is its ``messageId``. Identical rows in the same second are
    kept apart by their occurrence number, so both are counted.
    """
    current_time, seen = None, Counter()
    for line, row in rows:
        try:
            message = _rees46_message(row)
        except RowRejected as rejected:
            tally.skip(line, str(rejected))
            continue
        if message["timestamp"] != current_time:
            current_time, seen = message["timestamp"], Counter()
        content = "\x1f".join(row[column] for column in HEADERS[Format.REES46])
        digest = hashlib.sha256(content.encode()).hexdigest()[:24]
        seen[digest] += 1
        message["messageId"] = f"rees46-{digest}" + (f"-{seen[digest]}" if seen[digest] > 1 else "")
        if message["event"] == "Order Completed":
            message["properties"]["order_id"] = message["messageId"]
        tally.events[message["event"]] += 1
        yield message


def _rees46_message(row: dict[str, str]) -> dict:
    event = REES46_EVENTS.get(row["event_type"].strip())
    if event is None:
        raise RowRejected(f"event_type is not one of {', '.join(REES46_EVENTS)}")
    user_id = row["user_id"].strip()
    if not user_id:
        raise RowRejected("user_id is empty")
    product_id = row["product_id"].strip()
    if not product_id:
        raise RowRejected("product_id is empty")
    price = _number(_decimal(row["price"], "price"))
    product = {"product_id": product_id, "price": price}
    if row["category_code"].strip():
        product["category"] = row["category_code"].strip()
    if row["brand"].strip():
        product["brand"] = row["brand"].strip()
    if event == "Order Completed":
        properties = {"revenue": price, "products": [{**product, "quantity": 1}]}
    elif event in ("Product Added", "Product Removed"):
        properties = {**product, "quantity": 1}
    else:
        properties = product
    message = {"type": "track", "event": event, "userId": user_id,
               "timestamp": _iso(_utc_time(row["event_time"])), "properties": properties}
    session = row["user_session"].strip()
    if session:
        message["context"] = {"sessionId": session}
    return message


def _utc_time(value: str) -> datetime:
    """``2019-10-01 00:00:00 UTC``."""
    try:
        parsed = datetime.fromisoformat(value.strip().removesuffix(" UTC"))
    except ValueError:
        raise RowRejected("event_time is not a date and time") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


# ---- shared --------------------------------------------------------------------------------------

def _decimal(value: str, column: str) -> Decimal:
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise RowRejected(f"{column} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise RowRejected(f"{column} is negative or not finite")
    return amount


def _number(amount: Decimal) -> int | float:
    """A JSON number that the collector reads back as exactly ``amount`` (it parses str(number))."""
    number = int(amount) if amount == amount.to_integral_value() else float(amount)
    if Decimal(str(number)) != amount:
        raise RowRejected(f"amount {amount} cannot be sent exactly as a JSON number")
    return number


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _fit(message: dict) -> bool:
    """Cut the product list until the message fits the collector's per-event limit; True if cut.

    The amount stays exact: it is sent explicitly, not derived from the products.
    """
    products = message["properties"]["products"]
    keep = len(products)
    while len(orjson.dumps(message)) > MAX_EVENT_BYTES and keep > 0:
        keep = keep * 9 // 10
        message["properties"]["products"] = products[:keep]
    return keep < len(products)
