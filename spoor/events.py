"""The canonical event: the one shape every stage after the collector reads.

The collector turns Segment-spec messages into these (``spoor.ingest.normalize``);
backend services may produce them to the events topic directly.

Events-topic record format: the value is either one ``Event`` as a JSON object
(keyed by the user key: what a backend service sends) or a JSON array of
``Event``s that all belong on that partition (what the collector sends: one
record per partition per request, because each Kafka record costs the Python
producer ~100 us). Either way every event of a user is on partition
``murmur2(user_key) % partitions``, the default partitioner's choice for
key=user_key, so a user's events are read in the order they were accepted.
"""

from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationInfo, model_validator

from spoor.bad_rows import InvalidRecord
from spoor.consent import Statement

SCHEMA_VERSION = 1
# Event times outside this range are client bugs; they would also overflow date arithmetic downstream.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc)

# Every text is bounded by its PostgreSQL column (storage/tables.py): a longer one, from a record
# written straight to the topic, is a bad row, never a failed batch write.
Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Category = Annotated[str, StringConstraints(max_length=256)]
MAX_PRODUCT_LINES = 1000
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
# What a NUMERIC(18,4) column holds: an aggregate of money (a user's revenue, a cart's value) that
# would reach it is refused for the event that would take it there, not written to fail the batch.
MONEY_LIMIT = Decimal(10) ** 14
VISIBLE_MS_LIMIT = 10**12  # ~30 years: beyond, a visible time is garbage, not a long visit


class EventKind(StrEnum):
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    CLICK = "click"
    CART_ADD = "cart_add"
    CART_REMOVE = "cart_remove"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"
    REFUND = "refund"  # amount in ``revenue``, subtracted from the user's revenue
    IDENTIFY = "identify"
    CUSTOM = "custom"


# Segment E-commerce spec v2 event names (compared case- and separator-insensitively).
TRACK_KINDS: dict[str, EventKind] = {
    "product viewed": EventKind.PRODUCT_VIEW,
    "product clicked": EventKind.CLICK,
    "promotion clicked": EventKind.CLICK,
    "product added": EventKind.CART_ADD,
    "product removed": EventKind.CART_REMOVE,
    "checkout started": EventKind.CHECKOUT,
    "order completed": EventKind.PURCHASE,
    "order refunded": EventKind.REFUND,
}


class ProductLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Id | None = None
    category: Category | None = None
    price: Money | None = None
    quantity: int = Field(1, ge=0, le=1_000_000)


class Event(BaseModel):
    """One user action, normalised. Money is Decimal so sums are exact."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: Id
    kind: EventKind
    name: Annotated[str, StringConstraints(max_length=256)]
    user_key: Id
    user_id: Id | None = None
    anonymous_id: Id | None = None
    previous_id: Id | None = None  # an alias message's previousId: an earlier id of this user
    event_time: datetime
    received_at: datetime
    source: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "unknown"

    # Typed e-commerce properties (Segment E-commerce spec v2 names, snake_case).
    product_id: Id | None = None
    category: Category | None = None
    price: Money | None = None
    quantity: int | None = Field(None, ge=0, le=1_000_000)
    order_id: Id | None = None
    revenue: Money | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    products: Annotated[tuple[ProductLine, ...], Field(max_length=MAX_PRODUCT_LINES)] = ()

    # Where it happened; the raw IP and user agent are not kept.
    page_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    referrer: Annotated[str, StringConstraints(max_length=2048)] | None = None
    # Sessions and traffic source (behaviour analytics): context.sessionId, context.campaign.
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    utm_source: Annotated[str, StringConstraints(max_length=256)] | None = None
    utm_campaign: Annotated[str, StringConstraints(max_length=256)] | None = None
    utm_medium: Annotated[str, StringConstraints(max_length=256)] | None = None  # channel attribution
    # Journeys (stream_processors/journeys.py): a "Products Searched" event's query and result count, and
    # the visible time a "Page Engagement" event reports for its page.
    search_query: Annotated[str, StringConstraints(max_length=256)] | None = None
    result_count: int | None = Field(None, ge=0, le=10**12)
    visible_ms: int | None = Field(None, ge=0, le=VISIBLE_MS_LIMIT)

    # Edge enrichment (ingest/enrich.py): parsed user agent, client IP with its last octet
    # (IPv4) or last 80 bits (IPv6) dropped, known bots flagged. None when nothing was sent.
    browser: Annotated[str, StringConstraints(max_length=128)] | None = None
    browser_version: Annotated[str, StringConstraints(max_length=32)] | None = None
    os: Annotated[str, StringConstraints(max_length=128)] | None = None
    os_version: Annotated[str, StringConstraints(max_length=32)] | None = None
    device: Annotated[str, StringConstraints(max_length=128)] | None = None
    is_bot: bool | None = None
    anonymized_ip: Annotated[str, StringConstraints(max_length=45)] | None = None
    # The purposes the page granted when the event was sent, e.g. "analytics,personalisation" (from
    # context.consent.categoryPreferences, spoor/consent.py); None: the event says nothing, the person's
    # recorded consent applies (docs/privacy.md#consent).
    consent: Statement | None = None

    @model_validator(mode="after")
    def _no_nul_characters(self, info: ValidationInfo) -> "Event":
        # PostgreSQL text and jsonb cannot hold U+0000: such an event would fail every write.
        if info.context and info.context.get("nul_free"):
            return self  # the caller saw no escaped NUL anywhere in the JSON it validated
        for name, value in self.__dict__.items():
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{name} may not contain the NUL character")
        for line in self.products:
            if "\x00" in (line.product_id or "") + (line.category or ""):
                raise ValueError("products may not contain the NUL character")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=True))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Event":
        return cls.model_validate_json(raw)


EVENT_LIST = TypeAdapter(list[Event])


def encode_events(events: list[Event]) -> bytes:
    """One events-topic record value holding several events (a JSON array)."""
    return EVENT_LIST.dump_json(events, exclude_defaults=True)


ERASURE_FIELD = "erase_user_key"


def erasure_record(user_key: str) -> bytes:
    """The events-topic record ``spoor users erase`` sends on the user's partition: the worker drops
    the user's state and rows when it reads it, in order with the user's events."""
    return orjson.dumps({ERASURE_FIELD: user_key})


# Identity records (docs/identity.md), written by the worker itself. A link goes to the partition of
# an id the worker has just seen on a user's event ("id is now user_key"); a merge goes to the user's
# partition with the id's state, to be folded into the user's exactly once.
IDENTITY_LINK = "identity_link"
IDENTITY_MERGE = "identity_merge"
IDENTITY_KINDS = ("anonymous", "alias", "user")
MAX_CARRIED_IDS = 1000  # the most a user can hold (SPOOR_IDENTITY_MAX_IDS_PER_USER is at most 1000)


def identity_link_record(linked_id: str, user_key: str, kind: str) -> bytes:
    return orjson.dumps({IDENTITY_LINK: {"id": linked_id, "user_key": user_key, "kind": kind}})


def identity_merge_record(from_key: str, into_key: str, kind: str, state: bytes | None, ids: dict[str, str],
                          refused: str | None = None) -> bytes:
    """``state``: the id's table value (None: it had none); ``ids``: the ids joined to it (id -> linked or
    merged), which follow it: a merged one is in ``state`` already, a linked one's merge is on its way.
    ``refused``: the id's partition refused the link, and why (no state then)."""
    fields = {"from": from_key, "into": into_key, "kind": kind, "state": None if state is None else state.decode(),
              "ids": ids}
    return orjson.dumps({IDENTITY_MERGE: fields if refused is None else {**fields, "refused": refused}})


def identity_record(raw: bytes) -> tuple[str, dict] | None:
    """(IDENTITY_LINK or IDENTITY_MERGE, its fields) of an identity record; None for anything else.
    Raises ``InvalidRecord`` for a record that names itself one but is malformed."""
    if not raw.startswith((b'{"' + IDENTITY_LINK.encode(), b'{"' + IDENTITY_MERGE.encode())):
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        return None
    kind, fields = next(iter(value.items()))
    if kind not in (IDENTITY_LINK, IDENTITY_MERGE) or not isinstance(fields, dict):
        return None
    names = ("id", "user_key") if kind == IDENTITY_LINK else ("from", "into")
    for name in names:
        if not isinstance(fields.get(name), str) or not 0 < len(fields[name]) <= 256:
            raise InvalidRecord(f"{kind}.{name}", "must be an id of 1 to 256 characters")
    if fields.get("kind") not in IDENTITY_KINDS:
        raise InvalidRecord(f"{kind}.kind", f"must be one of {', '.join(IDENTITY_KINDS)}")
    if kind == IDENTITY_MERGE:
        if fields.get("state") is not None and not isinstance(fields["state"], str):
            raise InvalidRecord(f"{kind}.state", "must be a text or null")
        ids = fields.get("ids")
        if not isinstance(ids, dict) or len(ids) > MAX_CARRIED_IDS or not all(
                0 < len(i) <= 256 and s in ("linked", "merged") for i, s in ids.items()):
            raise InvalidRecord(f"{kind}.ids", f"must map at most {MAX_CARRIED_IDS} ids to linked or merged")
        refused = fields.get("refused")
        if refused is not None and (not isinstance(refused, str) or len(refused) > 300):
            raise InvalidRecord(f"{kind}.refused", "must be a reason of at most 300 characters")
    return kind, fields


def erased_user(raw: bytes) -> str | None:
    """The user key of an erasure record, else None (called only for records that are not events)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and list(value) == [ERASURE_FIELD] and isinstance(value[ERASURE_FIELD], str):
        return value[ERASURE_FIELD]
    return None


def decode_record(raw: bytes | None) -> list[Event]:
    """Events of one events-topic record (object or array); raises pydantic's ValidationError,
    or ``InvalidRecord`` for a record that is not even a value (a null, a tombstone)."""
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise InvalidRecord("$", "the record has no value (null)")
    # JSON can only carry U+0000 escaped: a record without that escape skips the per-field check.
    context = {"nul_free": b"\\u0000" not in raw}
    if raw.lstrip()[:1] == b"[":
        return EVENT_LIST.validate_json(raw, context=context)
    return [Event.model_validate_json(raw, context=context)]
