"""Spoor's tables. Change them only together with a migration in ``migrations/versions``."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MONEY = Numeric(18, 4)


class Base(DeclarativeBase):
    pass


class UserProfile(Base):
    """One row per user key: the stream's latest aggregate for that user."""

    __tablename__ = "user_profiles"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(256))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    events: Mapped[int] = mapped_column(BigInteger)
    page_views: Mapped[int] = mapped_column(BigInteger)
    product_views: Mapped[int] = mapped_column(BigInteger)
    distinct_products_viewed: Mapped[int] = mapped_column(Integer)
    clicks: Mapped[int] = mapped_column(BigInteger)
    cart_adds: Mapped[int] = mapped_column(BigInteger)
    cart_removes: Mapped[int] = mapped_column(BigInteger)
    cart_value: Mapped[Decimal] = mapped_column(MONEY)
    checkouts: Mapped[int] = mapped_column(BigInteger)
    orders: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(MONEY)
    first_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


WINDOWS = ("1d", "7d", "30d")
WINDOWED_COUNTS = ("page_views", "product_views", "cart_adds", "checkouts", "purchases")


class UserActivity(Base):
    """Per-user rolling windows and RFM inputs, written by the stream as of the user's latest event.

    Columns ``<count>_<window>`` and ``revenue_<window>`` exist for every name in
    WINDOWED_COUNTS x WINDOWS (see migration 0002); they are reached through the table's columns.
    """

    __tablename__ = "user_activity"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    frequency: Mapped[int] = mapped_column(Integer)
    monetary: Mapped[Decimal] = mapped_column(MONEY)
    favourite_category: Mapped[str | None] = mapped_column(Text)
    favourite_categories: Mapped[list] = mapped_column(JSONB)
    lifecycle_stage: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


for _count in WINDOWED_COUNTS:
    for _window in WINDOWS:
        UserActivity.__table__.append_column(Column(f"{_count}_{_window}", Integer, nullable=False))
for _window in WINDOWS:
    UserActivity.__table__.append_column(Column(f"revenue_{_window}", MONEY, nullable=False))


class BehaviourTrigger(Base):
    """A behavioural trigger (cart/browse abandonment, win-back), once per user and episode."""

    __tablename__ = "behaviour_triggers"

    # "<kind>:<user_key>:<episode>", so re-emitting the same episode is a no-op.
    trigger_id: Mapped[str] = mapped_column(String(400), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    user_key: Mapped[str] = mapped_column(String(256))
    episode: Mapped[str] = mapped_column(String(256))
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    details: Mapped[dict] = mapped_column(JSONB)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Event(Base):
    """Every accepted event once (the client's messageId). Partitioned by month of event_time (migration 0027,
    storage/retention.py), so the key holds event_time too; storage/writers.py keeps the id unique."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256))
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str | None] = mapped_column(String(256))
    category: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal | None] = mapped_column(MONEY)
    quantity: Mapped[int | None] = mapped_column(Integer)
    order_id: Mapped[str | None] = mapped_column(String(256))
    revenue: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str | None] = mapped_column(String(3))
    # The event's product lines as it carried them (an order's lines), [{product_id, category, price, quantity}]
    # (migration 0018): what campaign reports match recommended products against. NULL when none.
    products: Mapped[list | None] = mapped_column(JSONB)
    # Edge enrichment (migration 0004): parsed user agent, anonymised IP, bot flag.
    browser: Mapped[str | None] = mapped_column(String(128))
    browser_version: Mapped[str | None] = mapped_column(String(32))
    os: Mapped[str | None] = mapped_column(String(128))
    os_version: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str | None] = mapped_column(String(128))
    is_bot: Mapped[bool | None] = mapped_column(Boolean)
    anonymized_ip: Mapped[str | None] = mapped_column(String(45))
    persisted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("events_user_time", "user_key", "event_time"),
        {"postgresql_partition_by": "RANGE (event_time)"},
    )


class DeadLetter(Base):
    """A rejected event with its reason and original payload (a "bad row"). Partitioned by day of received_at
    (migration 0027, storage/retention.py)."""

    __tablename__ = "dead_letters"
    __table_args__ = {"postgresql_partition_by": "RANGE (received_at)"}

    # topic/partition/offset of the bad row itself: writing it twice is a no-op (storage/writers.py).
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    processor: Mapped[str] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    # Bad row version 2 (migration 0004): failure type, every message, request facts, replay lineage.
    schema_version: Mapped[int | None] = mapped_column(Integer)
    failure_type: Mapped[str | None] = mapped_column(String(64))
    messages: Mapped[list | None] = mapped_column(JSONB)
    request: Mapped[dict | None] = mapped_column(JSONB)
    replay_of: Mapped[str | None] = mapped_column(String(300))
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WriteKey(Base):
    """A client credential. Only the SHA-256 of the key is stored."""

    __tablename__ = "write_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserIdentity(Base):
    """An id joined to a user (migration 0015, docs/identity.md): ``linked`` when the user's events named
    it, ``merged`` once its rows moved into the user's (into one user at most), ``refused`` with a reason.
    The primary key (id, user_key) answers a lookup by id; refusals may name several users."""

    __tablename__ = "user_identities"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # anonymous | alias | user
    status: Mapped[str] = mapped_column(String(16))  # linked | merged | refused
    reason: Mapped[str | None] = mapped_column(Text)
    linked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("user_identities_user", "user_key"),
        Index("user_identities_merged", "id", unique=True, postgresql_where="status = 'merged'"),
    )
