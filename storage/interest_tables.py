"""Interests and product affinity (migration 0016, storage/interests.py). Weights are forward-decayed
logarithms, ``log2(w) + t / H``: see stream_processors/interests.py. Change them only with a migration."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, DateTime, Float, SmallInteger, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import MONEY, Base

WEIGHT = Float(53)


class UserInterest(Base):
    """A user's decayed interest in one value of a facet: product, bought, category, device, hour."""

    __tablename__ = "user_interests"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    facet: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), primary_key=True)
    weight: Mapped[float] = mapped_column(WEIGHT)
    price: Mapped[Decimal | None] = mapped_column(MONEY)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UserInterestProfile(Base):
    """A user's top category, device and hour and weighted price, rewritten by triggers on user_interests
    whenever a statement changes the user's rows (migration 0019); segments read it."""

    __tablename__ = "user_interest_profiles"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    top_category: Mapped[str | None] = mapped_column(String(256))
    preferred_device: Mapped[str | None] = mapped_column(String(256))
    preferred_hour: Mapped[int | None] = mapped_column(SmallInteger)
    price: Mapped[float | None] = mapped_column(WEIGHT)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProductPopularity(Base):
    """A product's decayed popularity (``weight``), trend (a short half-life) and purchases."""

    __tablename__ = "product_popularity"

    product_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    category: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal | None] = mapped_column(MONEY)
    weight: Mapped[float] = mapped_column(WEIGHT)
    trend: Mapped[float] = mapped_column(WEIGHT)
    bought: Mapped[float | None] = mapped_column(WEIGHT)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProductAffinity(Base):
    """Two products seen together (same session) or bought together (``bought``), decayed."""

    __tablename__ = "product_affinity"

    product_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    neighbour_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    weight: Mapped[float] = mapped_column(WEIGHT)
    bought: Mapped[float | None] = mapped_column(WEIGHT)


class UserRecommendations(Base):
    """A user's list, made by the segments runner ahead of requests (migration 0021)."""

    __tablename__ = "user_recommendations"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    items: Mapped[list] = mapped_column(JSONB)
    personal: Mapped[bool] = mapped_column(Boolean)
    interests_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ids: Mapped[list | None] = mapped_column(ARRAY(String(256)))  # merged into the user (migration 0028)


class ProductRecommendations(Base):
    """A product's "customers also bought" list, made by the segments runner ahead of requests (migration 0028)."""

    __tablename__ = "product_recommendations"

    product_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    items: Mapped[list] = mapped_column(JSONB)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
