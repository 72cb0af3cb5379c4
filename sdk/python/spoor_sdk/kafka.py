"""The Kafka transport: canonical events (Spoor's ``spoor/events.py`` format) straight to the events topic.

For backend services inside the cluster. Each event is one record keyed by its user key, so
Kafka's default partitioner puts it on the user's partition, as the collector does. The
producer is idempotent with acks=all; a batch is acknowledged only when every record is.
Invalid values are not judged here: Spoor's worker validates every event and dead-letters
what breaks the contract, so nothing is dropped silently.
"""

import json
from datetime import datetime, timezone
from decimal import Decimal

from spoor_sdk.errors import RetryableError
from spoor_sdk.http import Delivery
from spoor_sdk.messages import _json_default

# Segment E-commerce spec v2 names -> canonical kinds: a copy of spoor/events.py's TRACK_KINDS (this
# package installs without Spoor's); tests/unit/test_sdk_track_kinds.py holds the two together.
TRACK_KINDS = {
    "product viewed": "product_view",
    "product clicked": "click",
    "promotion clicked": "click",
    "product added": "cart_add",
    "product removed": "cart_remove",
    "checkout started": "checkout",
    "order completed": "purchase",
    "order refunded": "refund",
}

# Consent purposes and the category ids each answers to, case-insensitively: a copy of spoor/consent.py's
# PURPOSES and DEFAULT_CATEGORIES (tests/unit/test_sdk_consent.py holds them together). A shop whose
# SPOOR_CONSENT_CATEGORIES differs passes the same mapping as ``consent_categories``.
CONSENT_PURPOSES = ("analytics", "marketing", "personalisation")
DEFAULT_CONSENT_CATEGORIES = {
    "analytics": ["analytics", "performance", "statistics"],
    "marketing": ["marketing", "advertising", "targeting"],
    "personalisation": ["personalisation", "personalization"],
}


def consent_statement(message: dict, categories: dict[str, list[str]]) -> str | None:
    """The canonical event's ``consent`` (the purposes granted, comma-separated in CONSENT_PURPOSES order), as
    the collector reads ``context.consent.categoryPreferences``; None when the message states none. A purpose
    is granted when one of its categories is true and none false (one not named is not granted)."""
    preferences = ((message.get("context") or {}).get("consent") or {}).get("categoryPreferences")
    if preferences is None:
        return None
    index = {name.lower(): purpose for purpose, names in categories.items() for name in names}
    said: dict[str, bool] = {}
    for category, value in preferences.items():
        purpose = index.get(category.lower())
        if purpose is not None:
            said[purpose] = said.get(purpose, True) and value
    return ",".join(purpose for purpose in CONSENT_PURPOSES if said.get(purpose))


class KafkaTransport:
    def __init__(self, bootstrap_servers: str | list[str], topic: str = "spoor.events", source: str = "backend",
                 timeout: float = 30.0, consent_categories: dict[str, list[str]] | None = None,
                 **producer_config):
        from kafka import KafkaProducer  # optional dependency: pip install 'spoor-sdk[kafka]'

        self.topic = topic
        self.source = source
        self.timeout = timeout
        self.consent_categories = consent_categories or DEFAULT_CONSENT_CATEGORIES
        config = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "client_id": "spoor-sdk",
                  **producer_config}
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **config)

    def send(self, messages: list[dict], _encoded: list[bytes]) -> Delivery:
        received_at = datetime.now(timezone.utc)
        events = [canonical_event(message, received_at, self.source, self.consent_categories) for message in messages]
        try:
            futures = [self.producer.send(self.topic, key=event["user_key"].encode(),
                                          value=json.dumps(event, default=_json_default, separators=(",", ":")).encode())
                       for event in events]
            self.producer.flush(self.timeout)
            for future in futures:
                future.get(timeout=0)
        except Exception as err:  # any producer failure: retry the batch (event ids make it idempotent)
            raise RetryableError(f"Kafka did not acknowledge the batch: {err!r}") from err
        return Delivery(accepted=len(messages))

    def close(self) -> None:
        self.producer.close(timeout=self.timeout)


def canonical_event(message: dict, received_at: datetime, source: str,
                    consent_categories: dict[str, list[str]] = DEFAULT_CONSENT_CATEGORIES) -> dict:
    """A Segment-spec message as Spoor's canonical event (what the collector's normalisation produces)."""
    msg_type = message["type"]
    user_id, anonymous_id = message.get("userId"), message.get("anonymousId")
    properties = message.get("properties") or {}
    page = dict((message.get("context") or {}).get("page") or {})
    if msg_type == "track":
        name = message["event"]
        kind = TRACK_KINDS.get(" ".join(name.replace("_", " ").split()).lower(), "custom")
    elif msg_type in ("page", "screen"):
        name, kind = message.get("name") or msg_type, "page_view"
        if msg_type == "page":
            page.update(properties)
    else:
        name, kind = "identify", "identify"
    event = {"schema_version": 1, "event_id": message["messageId"], "kind": kind, "name": name,
             "user_key": user_id or anonymous_id, "user_id": user_id, "anonymous_id": anonymous_id,
             "event_time": message.get("timestamp") or received_at.isoformat(),
             "received_at": received_at.isoformat(), "source": source,
             "page_url": page.get("url"), "referrer": page.get("referrer"),
             "consent": consent_statement(message, consent_categories)}
    if msg_type == "track":
        event.update(_commerce(properties, kind))
    return {k: v for k, v in event.items() if v is not None}


def _commerce(props: dict, kind: str) -> dict:
    out = {"product_id": _id(props.get("product_id")) or _id(props.get("sku")), "category": props.get("category"),
           "price": props.get("price"), "quantity": props.get("quantity"), "order_id": _id(props.get("order_id")),
           "currency": props["currency"].upper() if isinstance(props.get("currency"), str) else props.get("currency")}
    if out["quantity"] is None and kind in ("cart_add", "cart_remove"):
        out["quantity"] = 1
    if kind == "purchase":
        lines = [{"product_id": _id(p.get("product_id")) or _id(p.get("sku")), "category": p.get("category"),
                  "price": p.get("price"), "quantity": p.get("quantity", 1)}
                 for p in props.get("products") or [] if isinstance(p, dict)]
        out["products"] = [{k: v for k, v in line.items() if v is not None} for line in lines]
        revenue = props.get("revenue", props.get("total"))
        if revenue is None:
            try:
                revenue = sum((Decimal(str(line.get("price") or 0)) * int(line.get("quantity", 1)) for line in lines),
                              Decimal(0))
            except (ArithmeticError, ValueError, TypeError):
                revenue = None  # an invalid line: the worker dead-letters the event with the reason
        out["revenue"] = revenue
    return out


def _id(value):
    return str(value) if value not in (None, "") and not isinstance(value, bool) else None
