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

Events are msgspec Structs: validating, decoding and encoding one costs ~2 us instead of pydantic's
~13 (bench/event_codec.py). The contract is pydantic's as before: keyword construction and
``model_validate`` validate and coerce (``kind="purchase"`` is ``EventKind.PURCHASE``), every failure
is a ``pydantic.ValidationError`` whose first error names the field (``loc``) and the reason
(``msg``), and the JSON is the same, defaults left out. ``model_copy`` does not validate (neither
did pydantic's).
"""

import operator
import re
from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import Meta
from pydantic_core import PydanticCustomError, ValidationError

from spoor.bad_rows import InvalidRecord
from spoor.consent import Statement

SCHEMA_VERSION = 1
# Event times outside this range are client bugs; they would also overflow date arithmetic downstream.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc)

# Every text is bounded by its PostgreSQL column (storage/tables.py): a longer one, from a record
# written straight to the topic, is a bad row, never a failed batch write.
Id = Annotated[str, Meta(min_length=1, max_length=256)]
Category = Annotated[str, Meta(max_length=256)]
MAX_PRODUCT_LINES = 1000
# Money is a NUMERIC(18,4) column: >= 0, at most 18 digits, 4 of them after the point (``_money_error``).
MONEY_DIGITS, MONEY_PLACES = 18, 4
# What a NUMERIC(18,4) column holds: an aggregate of money (a user's revenue, a cart's value) that
# would reach it is refused for the event that would take it there, not written to fail the batch.
MONEY_LIMIT = Decimal(10) ** 14
VISIBLE_MS_LIMIT = 10**12  # ~30 years: beyond, a visible time is garbage, not a long visit
Quantity = Annotated[int, Meta(ge=0, le=1_000_000)]
# With its zone: a time without one is ambiguous, and compared with the worker's bounds it raised (the
# whole batch failed, again on every retry) where it must be that record's bad row.
Time = Annotated[datetime, Meta(tz=True)]


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, Meta(min_length=min_length, max_length=max_length)]


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


class _Validated(msgspec.StructMeta):
    """Keyword construction validates, as pydantic's did: ``Event(**fields)`` is ``Event.model_validate(fields)``.
    msgspec's decoders and ``msgspec.convert`` build instances without this call; pickle and ``copy`` pass
    an instance's values positionally, and are not validated again."""

    def __call__(cls, *values, **fields):
        return super().__call__(*values, **fields) if values else cls.model_validate(fields)


class _Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, metaclass=_Validated):
    """pydantic's methods that callers use, on a msgspec Struct."""

    @classmethod
    def model_validate(cls, value: Any, *, nul_free: bool = False):
        """A validated instance from a mapping (or an instance); raises ``ValidationError``. ``nul_free``:
        the caller knows that no text in ``value`` holds U+0000, so they are not searched again."""
        try:
            model = msgspec.convert(value, cls, strict=False)
        except msgspec.ValidationError as err:
            raise _validation_error(cls, err, value) from None
        nul = None if nul_free else _nul_field(model)
        if nul is not None:
            raise _error(cls, (), _nul_reason(nul))
        return model

    @classmethod
    def model_validate_json(cls, raw: bytes | str):
        try:
            model = _decoder(cls).decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _validation_error(cls, err) from None
        nul = _nul_field(model) if _NUL_ESCAPE in (raw.encode() if isinstance(raw, str) else raw) else None
        if nul is not None:
            raise _error(cls, (), _nul_reason(nul))
        return model

    from_json = model_validate_json

    def model_copy(self, update: dict[str, Any] | None = None):
        """A copy with ``update``'s fields replaced, not validated (as pydantic's ``model_copy``) but for the
        money checks of ``__post_init__``, which msgspec runs."""
        return msgspec.structs.replace(self, **update) if update else self

    def model_dump(self) -> dict[str, Any]:
        """The fields as Python values (nested lines as dicts), as pydantic's ``model_dump()``."""
        return {name: _dumped(getattr(self, name)) for name in self.__struct_fields__}

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)


def _dumped(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_dumped(item) for item in value)
    return value.model_dump() if isinstance(value, _Model) else value


def _money_error(amount: Decimal) -> str | None:
    """pydantic's checks of ``Decimal`` with ge=0, max_digits=18, decimal_places=4, in its order and words."""
    if amount.is_finite() and _ZERO <= amount < MONEY_LIMIT and not amount % _SMALLEST_MONEY:
        return None  # the common case in ~0.3 us (the checks below take ~1.5)
    if not amount.is_finite():
        return "Input should be a finite number"
    _sign, digits_of, exponent = amount.normalize().as_tuple()
    if exponent >= 0:
        digits, places = len(digits_of) + exponent, 0
    else:
        places = -exponent
        digits = max(len(digits_of), places)
    if digits > MONEY_DIGITS:
        return f"Decimal input should have no more than {MONEY_DIGITS} digits in total"
    if places > MONEY_PLACES:
        return f"Decimal input should have no more than {MONEY_PLACES} decimal places"
    if digits - places > MONEY_DIGITS - MONEY_PLACES:
        return f"Decimal input should have no more than {MONEY_DIGITS - MONEY_PLACES} digits before the decimal point"
    if amount < 0:
        return "Input should be greater than or equal to 0"
    return None


_ZERO, _SMALLEST_MONEY = Decimal(0), Decimal(1).scaleb(-MONEY_PLACES)
MONEY_FIELDS = ("price", "revenue")
_FIELD_REASON = ": "  # how __post_init__ names the field in its ValueError (msgspec reports the Struct's path)


class ProductLine(_Model):
    product_id: Id | None = None
    category: Category | None = None
    price: Decimal | None = None
    quantity: Quantity = 1

    def __post_init__(self) -> None:
        if self.price is not None and (reason := _money_error(self.price)):
            raise ValueError(f"price{_FIELD_REASON}{reason}")


class Event(_Model, kw_only=True):
    """One user action, normalised. Money is Decimal so sums are exact."""

    schema_version: int = SCHEMA_VERSION
    event_id: Id
    kind: EventKind
    name: _text(256)
    user_key: Id
    user_id: Id | None = None
    anonymous_id: Id | None = None
    previous_id: Id | None = None  # an alias message's previousId: an earlier id of this user
    event_time: Time
    received_at: Time
    source: _text(64, 1) = "unknown"

    # Typed e-commerce properties (Segment E-commerce spec v2 names, snake_case).
    product_id: Id | None = None
    category: Category | None = None
    price: Decimal | None = None
    quantity: Quantity | None = None
    order_id: Id | None = None
    revenue: Decimal | None = None
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] | None = None
    products: Annotated[tuple[ProductLine, ...], Meta(max_length=MAX_PRODUCT_LINES)] = ()

    # Where it happened; the raw IP and user agent are not kept.
    page_url: _text(2048) | None = None
    referrer: _text(2048) | None = None
    # Sessions and traffic source (behaviour analytics): context.sessionId, context.campaign.
    session_id: _text(256, 1) | None = None
    utm_source: _text(256) | None = None
    utm_campaign: _text(256) | None = None
    utm_medium: _text(256) | None = None  # channel attribution
    # Journeys (stream_processors/journeys.py): a "Products Searched" event's query and result count, and
    # the visible time a "Page Engagement" event reports for its page.
    search_query: _text(256) | None = None
    result_count: Annotated[int, Meta(ge=0, le=10**12)] | None = None
    visible_ms: Annotated[int, Meta(ge=0, le=VISIBLE_MS_LIMIT)] | None = None

    # Edge enrichment (ingest/enrich.py): parsed user agent, client IP with its last octet
    # (IPv4) or last 80 bits (IPv6) dropped, known bots flagged. None when nothing was sent.
    browser: _text(128) | None = None
    browser_version: _text(32) | None = None
    os: _text(128) | None = None
    os_version: _text(32) | None = None
    device: _text(128) | None = None
    is_bot: bool | None = None
    anonymized_ip: _text(45) | None = None
    # The purposes the page granted when the event was sent, e.g. "analytics,personalisation" (from
    # context.consent.categoryPreferences, spoor/consent.py); None: the event says nothing, the person's
    # recorded consent applies (docs/privacy.md#consent).
    consent: Statement | None = None

    def __post_init__(self) -> None:
        for name in MONEY_FIELDS:
            amount = getattr(self, name)
            if amount is not None and (reason := _money_error(amount)):
                raise ValueError(f"{name}{_FIELD_REASON}{reason}")


# PostgreSQL text and jsonb cannot hold U+0000: an event with one would fail every write.
def _text_fields(model: type) -> tuple[str, ...]:
    def is_text(kind) -> bool:
        return isinstance(kind, msgspec.inspect.StrType) or (
            isinstance(kind, msgspec.inspect.UnionType) and any(map(is_text, kind.types)))
    return tuple(f.name for f in msgspec.inspect.type_info(model).fields if is_text(f.type))


_TEXT_FIELDS = {model: _text_fields(model) for model in (Event, ProductLine)}


_TEXTS = {model: operator.attrgetter(*names) for model, names in _TEXT_FIELDS.items()}


def _nul_field(model: _Model) -> str | None:
    """The first text field holding U+0000 (``products`` for a line's), else None."""
    if "\x00" not in "".join(filter(None, _TEXTS[type(model)](model))) and not getattr(model, "products", ()):
        return None
    for name in _TEXT_FIELDS[type(model)]:
        value = getattr(model, name)
        if value is not None and "\x00" in value:
            return name
    for line in getattr(model, "products", ()):
        if _nul_field(line) is not None:
            return "products"
    return None


# -- errors: msgspec's, reported as pydantic's (loc, msg) ---------------------------------------------

def _nul_reason(field: str) -> str:
    return f"Value error, {field} may not contain the NUL character"  # pydantic's words for a validator's



def _error(model: type, loc: tuple, reason: str) -> ValidationError:
    return ValidationError.from_exception_data(model.__name__, [
        {"type": PydanticCustomError("event_invalid", reason), "loc": loc, "input": None}])


def _validation_error(model: type, err: msgspec.MsgspecError, data: Any = None) -> ValidationError:
    """The ``ValidationError`` for a msgspec error. msgspec stops at the first error in the input's order;
    pydantic named the first in the fields' order, so for a mapping the fields are checked again one by one
    (only on this path) to name the same one."""
    if not isinstance(err, msgspec.ValidationError):  # a DecodeError that is not a ValidationError
        return _error(model, (), f"Invalid JSON: {err}")
    first = _first_failure(model, data) if isinstance(data, dict) else None
    return _error(model, *(first or _located(str(err))))


def _record_error(raw: bytes, many: bool, err: msgspec.MsgspecError) -> ValidationError:
    """``_validation_error`` for a record: the failing event's fields are checked again in their order."""
    if isinstance(err, msgspec.ValidationError):
        loc, _reason = _located(str(err))
        try:
            value = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError):
            value = None
        if not many and isinstance(value, dict):
            return _validation_error(Event, err, value)
        if many and loc and isinstance(value, list) and isinstance(loc[0], int) and isinstance(value[loc[0]], dict):
            first = _first_failure(Event, value[loc[0]], loc[:1])
            if first:
                return _error(Event, *first)
    return _validation_error(Event, err)


def _located(message: str) -> tuple[tuple, str]:
    """(loc, reason) of a msgspec message: loc from its ``- at `$...``` path, made like pydantic's (an
    unknown or missing field is named in loc, as is a money field by ``__post_init__``)."""
    text, _, path = message.rpartition(" - at `")
    if not text:  # no path: the error is at the top
        text, path = message, "$`"
    loc = tuple(int(part) if part.isdigit() else part for part in
                path[1:-1].replace("[", ".").replace("]", "").split(".") if part)
    for prefix, reason in (("Object contains unknown field `", "Extra inputs are not permitted"),
                           ("Object missing required field `", "Field required")):
        if text.startswith(prefix) and text.endswith("`"):
            return (*loc, text[len(prefix):-1]), reason
    name, separator, reason = text.partition(_FIELD_REASON)
    if separator and name in MONEY_FIELDS:
        return (*loc, name), reason
    for pattern, words in _PYDANTIC_WORDS:
        if match := pattern.fullmatch(text):
            return loc, words.format(*match.groups(), "" if match[1] == "1" else "s")
    return loc, text


# The reasons of the bounds the collector can break, in the words its 400 answers and dead letters gave
# before (pydantic's); other reasons are msgspec's ("Expected `str`, got `int`").
_PYDANTIC_WORDS = [(re.compile(pattern), words) for pattern, words in (
    (r"Expected `str` of length <= (\d+)", "String should have at most {} character{}"),
    (r"Expected `str` of length >= (\d+)", "String should have at least {} character{}"),
    (r"Expected `int` <= (\d+)", "Input should be less than or equal to {}"),
    (r"Expected `int` >= (\d+)", "Input should be greater than or equal to {}"),
    (r"Expected `str` matching regex '(.*)'", "String should match pattern '{}'"),
)]


def _first_failure(model: type, data: dict, prefix: tuple = ()) -> tuple[tuple, str] | None:
    """(loc, reason) of the first field of ``model`` in declaration order that ``data`` gets wrong, then
    of its first unknown field (pydantic's order), else None."""
    fields = msgspec.structs.fields(model)
    for field in fields:
        if field.name not in data:
            if field.required:
                return (*prefix, field.name), "Field required"
            continue
        value = data[field.name]
        if field.name == "products" and isinstance(value, (list, tuple)):
            if len(value) > MAX_PRODUCT_LINES:
                return (*prefix, field.name), (f"Tuple should have at most {MAX_PRODUCT_LINES} items after "
                                               f"validation, not {len(value)}")
            for index, line in enumerate(value):
                found = isinstance(line, dict) and _first_failure(ProductLine, line, (*prefix, field.name, index))
                if found:
                    return found
        try:
            value = msgspec.convert(value, field.type, strict=False)
        except msgspec.ValidationError as err:
            loc, reason = _located(str(err))
            return (*prefix, field.name, *loc), reason
        if field.name in MONEY_FIELDS and value is not None and (reason := _money_error(value)):
            return (*prefix, field.name), reason
    names = {field.name for field in fields}
    extra = next((key for key in data if key not in names), None)
    return None if extra is None else ((*prefix, extra), "Extra inputs are not permitted")


_NUL_ESCAPE = b"\\u0000"
_DECODERS: dict[type, msgspec.json.Decoder] = {}
_ENCODER = msgspec.json.Encoder(decimal_format="string")


def _decoder(model: type) -> msgspec.json.Decoder:
    if model not in _DECODERS:
        _DECODERS[model] = msgspec.json.Decoder(model, strict=False)
    return _DECODERS[model]


EVENT_LIST = msgspec.json.Decoder(list[Event], strict=False)


def encode_events(events: list[Event]) -> bytes:
    """One events-topic record value holding several events (a JSON array)."""
    return _ENCODER.encode(events)


def encode_product_lines(lines: list[ProductLine]) -> bytes:
    """An event's product lines as JSON, exactly as ``encode_events`` writes them inside the event."""
    return _ENCODER.encode(lines)


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
    many = raw.lstrip()[:1] == b"["
    try:
        events = EVENT_LIST.decode(raw) if many else [_decoder(Event).decode(raw)]
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise _record_error(raw, many, err) from None
    # JSON can only carry U+0000 escaped: a record without that escape skips the per-field check.
    if _NUL_ESCAPE in raw:
        for index, event in enumerate(events):
            nul = _nul_field(event)
            if nul is not None:
                raise _error(Event, (index,) if many else (), _nul_reason(nul))
    return events
