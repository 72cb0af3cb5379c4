"""The canonical event: the one shape every stage after the collector reads.

The collector turns Segment-spec messages into these (``ingest.normalize``);
backend services may produce them to the events topic directly. Kafka records
carry the JSON of ``Event`` as value and the user key as key.
"""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]


class EventKind(StrEnum):
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    CLICK = "click"
    CART_ADD = "cart_add"
    CART_REMOVE = "cart_remove"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"
    IDENTIFY = "identify"
    CUSTOM = "custom"


class ProductLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Id | None = None
    category: str | None = None
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
    event_time: datetime
    received_at: datetime
    source: str = "unknown"

    # Typed e-commerce properties (Segment E-commerce spec v2 names, snake_case).
    product_id: Id | None = None
    category: str | None = None
    price: Money | None = None
    quantity: int | None = Field(None, ge=0, le=1_000_000)
    order_id: Id | None = None
    revenue: Money | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    products: tuple[ProductLine, ...] = ()

    # Where it happened; the raw IP and user agent are not kept.
    page_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    referrer: Annotated[str, StringConstraints(max_length=2048)] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=True, exclude={"schema_version"})
                            | {"schema_version": self.schema_version})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Event":
        return cls.model_validate_json(raw)
