"""Segment HTTP Tracking API messages -> canonical ``Event``s. Pure: no I/O.

A message that cannot be normalised raises ``InvalidEvent`` naming the field
and the reason; the collector answers 400 and dead-letters the original.

Event ids. A message's ``messageId`` is its event id. A message without one gets an id derived
from its content (``content_id``), so a client that retries a request gets the same ids again
and the worker counts each event once. Two messages are *the same* when they come from the same
source, have the same type (after a single-message endpoint's implied type) and are equal as
JSON (key order aside) once the fields a retry may change are left out: ``sentAt`` and
``receivedAt`` (stamped per attempt), ``writeKey`` and the other credential fields of
``CREDENTIAL_FIELDS``, and ``context.ip`` (the address the attempt came from). Everything else
counts: the user, event name, properties, ``timestamp``, the rest of the context (the batch's
context for messages without their own). Consequently a message with neither ``messageId`` nor
``timestamp`` is the same as an identical one sent again later: the repeat is deduplicated. Within
one request identical copies stay distinct (the intake numbers repeats, ``repeated_id``), which a
retry of the whole request reproduces. Clients that can should send ``messageId`` (Segment's
libraries all do).
"""

import math
import uuid
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import ValidationError

from spoor.bad_rows import InvalidRecord
from spoor.consent import DEFAULT_INDEX, ConsentError, statement
from spoor.events import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, TRACK_KINDS, Event, EventKind
from spoor.ingest import IngestError
from spoor.settings import Settings

MESSAGE_TYPES = {"track", "page", "screen", "identify", "alias", "group"}
# An event may claim a time at most this far after its receipt (Settings.max_future_event_s).
DEFAULT_MAX_FUTURE_S: float = Settings.model_fields["max_future_event_s"].default
# Top-level fields that carry a credential (analytics.js puts ``writeKey`` in every message): they
# are no part of an event's identity and are never stored with a dead letter.
CREDENTIAL_FIELDS = frozenset({"writeKey", "write_key", "apiKey", "api_key", "secret", "password", "token"})
PER_ATTEMPT_FIELDS = frozenset({"sentAt", "receivedAt"}) | CREDENTIAL_FIELDS
EVENT_ID_NAMESPACE = uuid.UUID("5b0c1d6e-8f0a-4c55-9a55-3f1a0e5c2d18")  # never change: ids of retries must match
ID_INTEGER_LIMIT = 2 ** 64  # what JSON parsers keep as integers; beyond, an "id" is a float or garbage
SHOWN_CHARS = 60  # of an offending value quoted in a reason


class InvalidEvent(IngestError, InvalidRecord):
    """A message that breaks the contract. ``field`` is a dotted path into the message.

    The collector's ``InvalidRecord``: one message that becomes a bad row (``schema_violation``
    unless a subclass says otherwise), while the rest of its request goes on."""


def normalize(message: Any, *, received_at: datetime, source: str,
              batch_sent_at: Any = None, default_type: str | None = None,
              enrichment: dict[str, Any] | None = None, max_future_s: float = DEFAULT_MAX_FUTURE_S,
              consent_index: dict[str, str] = DEFAULT_INDEX, nul_free: bool = False) -> Event:
    """``enrichment``: fields computed at the edge (ingest.enrich), added as they are.
    ``max_future_s``: how far after ``received_at`` the event's (corrected) time may be.
    ``consent_index``: consent category id -> purpose (spoor.consent.category_index).
    ``nul_free``: the caller saw no U+0000 in the message's JSON, its source or the enrichment's input,
    so the event's texts are not searched for it again."""
    if not isinstance(message, dict):
        raise InvalidEvent("$", "a message must be a JSON object")
    if received_at.tzinfo is None:  # an event's times carry their zone (spoor.events.Time)
        received_at = received_at.replace(tzinfo=timezone.utc)
    msg_type = message.get("type") or default_type
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise InvalidEvent("type", f"must be one of {sorted(MESSAGE_TYPES)}, got {_shown(msg_type)}")

    user_id = _optional_id(message, "userId")
    anonymous_id = _optional_id(message, "anonymousId")
    user_key = user_id or anonymous_id
    if user_key is None:
        raise InvalidEvent("userId", "userId or anonymousId is required")

    name, kind = _name_and_kind(message, msg_type)
    properties = message.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidEvent("properties", "must be a JSON object")
    context = message.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidEvent("context", "must be a JSON object")
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    if msg_type == "page":
        page = {**page, **properties}

    fields: dict[str, Any] = {
        "event_id": _optional_id(message, "messageId") or content_id(message, source, msg_type),
        "kind": kind,
        "name": name,
        "user_key": user_key,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "previous_id": _optional_id(message, "previousId") if msg_type == "alias" else None,
        "event_time": event_time(message, received_at, batch_sent_at, max_future_s),
        "received_at": received_at,
        "source": source,
        "page_url": _text(page.get("url")),
        "referrer": _text(page.get("referrer")),
        **_session_and_campaign(context),
        "consent": _consent(context, consent_index),
    }
    if msg_type == "track":
        fields.update(_commerce_properties(properties, kind))
        fields.update(_journey_properties(properties, name))
    if enrichment:
        fields.update(enrichment)
    try:
        return Event.model_validate(fields, nul_free=nul_free)
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise InvalidEvent(_message_path(path) if path else "$", first["msg"]) from err


def content_id(message: dict, source: str, msg_type: str) -> str:
    """The event id of a message without ``messageId``: the same for the same message (module docstring)."""
    kept = {key: value for key, value in message.items() if key not in PER_ATTEMPT_FIELDS and key != "messageId"}
    context = kept.get("context")
    if isinstance(context, dict) and "ip" in context:
        kept["context"] = {key: value for key, value in context.items() if key != "ip"}
    kept["type"] = msg_type
    try:
        canonical = orjson.dumps([source, kept], option=orjson.OPT_SORT_KEYS)
    except TypeError as err:  # the intake only passes JSON-representable messages; a direct caller may not
        raise InvalidEvent("$", f"not representable as JSON: {err}") from None
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, canonical.decode()))


def repeated_id(event_id: str, occurrence: int) -> str:
    """The id of the ``occurrence``-th (1, 2, ...) identical copy of a message without ``messageId``
    in one request, so that copies are distinct events and a retry of the request gives the same ids."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{event_id}#{occurrence}"))


def event_time(message: dict, received_at: datetime, batch_sent_at: Any = None,
               max_future_s: float = DEFAULT_MAX_FUTURE_S) -> datetime:
    """Segment's clock-skew correction: receivedAt - (sentAt - timestamp).

    A client whose clock is off by an hour still gets its events placed at the
    server's time of the action. Without sentAt the timestamp is trusted as is,
    within bounds: 1970..2100, and at most ``max_future_s`` after the receipt (so
    no single request can claim a time in the future of every watermark).
    """
    timestamp = _parse_time(message, "timestamp") or _parse_time(message, "originalTimestamp")
    if timestamp is None:
        return received_at
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=timezone.utc)
    sent_at = _parse_time(message, "sentAt")
    if sent_at is None and batch_sent_at is not None:
        sent_at = _parse_time({"sentAt": batch_sent_at}, "sentAt")
    try:
        corrected = timestamp if sent_at is None else received_at - (sent_at - timestamp)
    except OverflowError:
        raise InvalidEvent("timestamp", "out of range once corrected for the client's clock (sentAt)") from None
    if not EARLIEST_EVENT_TIME <= corrected < LATEST_EVENT_TIME:
        raise InvalidEvent("timestamp", f"must fall between {EARLIEST_EVENT_TIME:%Y} and {LATEST_EVENT_TIME:%Y}")
    ahead = (corrected - received_at).total_seconds()
    if ahead > max_future_s:
        raise InvalidEvent("timestamp", f"may be at most {max_future_s:g} s after its receipt (after the sentAt "
                                        f"clock correction); this one is {ahead:.0f} s ahead")
    return corrected


def _session_and_campaign(context: dict) -> dict[str, Any]:
    """The client's session id (``context.sessionId``) and UTM source / campaign (``context.campaign``)."""
    campaign = context.get("campaign") if isinstance(context.get("campaign"), dict) else {}
    session_id = context.get("sessionId")
    if isinstance(session_id, int) and not isinstance(session_id, bool):
        session_id = _integer_text(session_id, "context.sessionId")  # Segment's mobile libraries send a number
    elif session_id is not None and not isinstance(session_id, str):
        raise InvalidEvent("context.sessionId", "must be a string or an integer")
    return {"session_id": session_id or None, "utm_source": _text(campaign.get("source")),
            "utm_campaign": _text(campaign.get("name")), "utm_medium": _text(campaign.get("medium"))}


def _consent(context: dict, index: dict[str, str]):
    try:
        return statement(context, index)
    except ConsentError as err:
        raise InvalidEvent(err.field, err.reason) from None


def _name_and_kind(message: dict, msg_type: str) -> tuple[str, EventKind]:
    if msg_type == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            raise InvalidEvent("event", "a track message needs an event name")
        canonical = " ".join(name.replace("_", " ").split()).lower()
        return name, TRACK_KINDS.get(canonical, EventKind.CUSTOM)
    if msg_type in ("page", "screen"):
        return _text(message.get("name")) or msg_type, EventKind.PAGE_VIEW
    if msg_type == "identify":
        return "identify", EventKind.IDENTIFY
    return msg_type, EventKind.CUSTOM


def _commerce_properties(props: dict, kind: EventKind) -> dict[str, Any]:
    out: dict[str, Any] = {
        "product_id": _id_value(props, "product_id") or _id_value(props, "sku"),
        "category": _text(props.get("category")),
        "price": _money(props, "price"),
        "order_id": _id_value(props, "order_id"),
        "currency": _currency(props),
    }
    quantity = props.get("quantity")
    if quantity is not None:
        out["quantity"] = _whole_number(quantity, "properties.quantity", "must be a whole number")
    elif kind in (EventKind.CART_ADD, EventKind.CART_REMOVE):
        out["quantity"] = 1
    if kind in (EventKind.PURCHASE, EventKind.REFUND):  # a refund's revenue is the amount refunded
        out["products"] = tuple(_product_lines(props.get("products")))
        revenue = _money(props, "revenue")
        if revenue is None:
            revenue = _money(props, "total")
        if revenue is None and out["products"]:
            try:
                revenue = sum(((line["price"] or 0) * line["quantity"] for line in out["products"]), Decimal(0))
            except ArithmeticError:  # decimal.Overflow of a huge price times a huge quantity
                raise InvalidEvent("properties.products", "the lines' total is out of range") from None
        out["revenue"] = revenue if revenue is not None else Decimal(0)
    return out


SEARCHED = "products searched"  # Segment e-commerce spec: properties.query, and result_count if the shop sends it
ENGAGEMENT = "page engagement"  # the browser SDK on page hide: properties.visible_ms (docs/analytics.md, Journeys)
MAX_QUERY_CHARS = 256  # the Event's bound; a longer query is cut (journeys keep fewer characters still)


def _journey_properties(props: dict, name: str) -> dict[str, Any]:
    canonical = " ".join(name.replace("_", " ").split()).lower()
    if canonical == SEARCHED:
        out: dict[str, Any] = {"search_query": _text(props.get("query")) and props["query"][:MAX_QUERY_CHARS]}
        if props.get("result_count") is not None:
            out["result_count"] = _whole_number(props["result_count"], "properties.result_count",
                                                "must be a whole number >= 0")
        return out
    if canonical == ENGAGEMENT and props.get("visible_ms") is not None:
        value = props["visible_ms"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidEvent("properties.visible_ms", "must be a number of milliseconds >= 0")
        return {"visible_ms": round(value)}
    return {}


def _product_lines(products: Any) -> list[dict[str, Any]]:
    if products is None:
        return []
    if not isinstance(products, list):
        raise InvalidEvent("properties.products", "must be a list")
    lines = []
    for i, item in enumerate(products):
        if not isinstance(item, dict):
            raise InvalidEvent(f"properties.products.{i}", "must be a JSON object")
        quantity = _whole_number(item.get("quantity", 1), f"properties.products.{i}.quantity",
                                 "must be a whole number >= 0")
        if quantity < 0:
            raise InvalidEvent(f"properties.products.{i}.quantity", "must be a whole number >= 0")
        lines.append({
            "product_id": _id_value(item, "product_id") or _id_value(item, "sku"),
            "category": _text(item.get("category")),
            "price": _money(item, "price", f"properties.products.{i}."),
            "quantity": quantity,
        })
    return lines


def _money(props: dict, key: str, prefix: str = "properties.") -> Decimal | None:
    value = props.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidEvent(prefix + key, "must be a number")
    try:
        amount = Decimal(value) if isinstance(value, int) else Decimal(str(value))
    except InvalidOperation:
        raise InvalidEvent(prefix + key, f"must be a number, got {_shown(value)}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidEvent(prefix + key, "must be a finite number >= 0")
    return amount


def _currency(props: dict) -> str | None:
    value = props.get("currency")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise InvalidEvent("properties.currency", "must be a 3-letter ISO 4217 code")
    return value.upper()


def _optional_id(message: dict, key: str) -> str | None:
    value = message.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(key, "must be a string")
    return value if isinstance(value, str) else _integer_text(value, key)


def _id_value(props: dict, key: str) -> str | None:
    value = props.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(f"properties.{key}", "must be a string or an integer")
    return value if isinstance(value, str) else _integer_text(value, f"properties.{key}")


def _integer_text(value: int, field: str) -> str:
    if not -ID_INTEGER_LIMIT < value < ID_INTEGER_LIMIT:
        raise InvalidEvent(field, "an integer id must fit in 64 bits")
    return str(value)


def _whole_number(value: Any, field: str, reason: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(field, reason)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidEvent(field, reason)
        return int(value)
    return value


def _shown(value: Any) -> str:
    """An offending value for a reason: its repr (which escapes NUL and lone surrogates), shortened."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long for repr, a structure too deep
        return f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_time(message: dict, key: str) -> datetime | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(key, "must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(key, f"not an ISO-8601 time: {_shown(value)}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _message_path(model_field: str) -> str:
    """Map a canonical field back to where it came from in the Segment message."""
    top_level = {"event_id": "messageId", "user_key": "userId", "user_id": "userId",
                 "anonymous_id": "anonymousId", "previous_id": "previousId", "name": "event", "event_time": "timestamp",
                 "page_url": "context.page.url", "referrer": "context.page.referrer",
                 "session_id": "context.sessionId", "utm_source": "context.campaign.source",
                 "utm_campaign": "context.campaign.name", "utm_medium": "context.campaign.medium",
                 "search_query": "properties.query"}
    head, _, rest = model_field.partition(".")
    if head in top_level:
        return top_level[head]
    return "properties." + model_field
