"""Tables of segments and campaigns (migrations 0006, 0014, 0018). Reads user_profiles, user_activity,
behaviour_triggers and events; writes only the tables below."""

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import Base

TS = DateTime(timezone=True)


class SegmentDefinition(Base):
    """A named segment: its validated definition (JSON) and whether membership is maintained."""

    __tablename__ = "segments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[dict] = mapped_column(JSONB)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | active | paused
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    last_full_recompute_at: Mapped[datetime | None] = mapped_column(TS)
    # Why the last refresh failed because of the segment itself (its definition or its statement) and
    # since when; NULL again once a refresh succeeds (migration 0014).
    error: Mapped[str | None] = mapped_column(Text)
    failed_since: Mapped[datetime | None] = mapped_column(TS)


class SegmentMember(Base):
    """Current members of a segment."""

    __tablename__ = "segment_members"

    segment: Mapped[str] = mapped_column(String(64), ForeignKey("segments.name", ondelete="CASCADE"),
                                         primary_key=True)
    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(TS)


class SegmentTransition(Base):
    """Membership history: every entry and exit, in order. Also the outbox of the segments topic
    (``published_at`` is set once the enter/exit message is acknowledged by Kafka)."""

    __tablename__ = "segment_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    segment: Mapped[str] = mapped_column(String(64), ForeignKey("segments.name", ondelete="CASCADE"))
    user_key: Mapped[str] = mapped_column(String(256))
    change: Mapped[str] = mapped_column(String(8))  # enter | exit
    at: Mapped[datetime] = mapped_column(TS)
    published_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        Index("segment_transitions_segment_at", "segment", "at"),
        Index("segment_transitions_user", "user_key"),
        Index("segment_transitions_unpublished", "id", postgresql_where="published_at IS NULL"),
    )


class SegmentCursor(Base):
    """How far the incremental membership pass has read profile changes."""

    __tablename__ = "segment_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    changed_since: Mapped[datetime] = mapped_column(TS)


class UserConsent(Base):
    """A person's consent per purpose (docs/privacy.md#consent) and the time zone of their quiet hours.

    A purpose is withdrawn when ``opted_out`` (every purpose), its recorded column (`spoor users consent`,
    the API) or its ``page_`` column (the latest statement on the person's events) is false (migration 0025)."""

    __tablename__ = "user_consent"
    __table_args__ = (Index("user_consent_updated_at", "updated_at"),)

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    time_zone: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    analytics: Mapped[bool | None] = mapped_column(Boolean)
    marketing: Mapped[bool | None] = mapped_column(Boolean)
    personalisation: Mapped[bool | None] = mapped_column(Boolean)
    page_analytics: Mapped[bool | None] = mapped_column(Boolean)
    page_marketing: Mapped[bool | None] = mapped_column(Boolean)
    page_personalisation: Mapped[bool | None] = mapped_column(Boolean)
    page_stated_at: Mapped[datetime | None] = mapped_column(TS)


class Campaign(Base):
    """Audience + action + rules, as a validated JSON definition."""

    __tablename__ = "campaigns"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | active | paused
    launched_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class CampaignDelivery(Base):
    """One (campaign, user, episode): at most one message ever, whatever the retries."""

    __tablename__ = "campaign_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    campaign: Mapped[str] = mapped_column(String(64), ForeignKey("campaigns.name", ondelete="CASCADE"))
    user_key: Mapped[str] = mapped_column(String(256))
    episode: Mapped[str] = mapped_column(String(400))  # trigger id or segment transition id
    idempotency_key: Mapped[str] = mapped_column(String(64))
    # The episode's time (a trigger's fired_at, a segment entry's at): fixed with the episode, the partition key
    # (migration 0030, monthly), so the unique indexes hold it.
    triggered_at: Mapped[datetime] = mapped_column(TS, primary_key=True)
    due_at: Mapped[datetime] = mapped_column(TS)
    expires_at: Mapped[datetime | None] = mapped_column(TS)
    # pending | holdout | sent | dead_letter | expired | opted_out | capped
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TS)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_response: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # Recommendations (migration 0018): how many the message carries (fixed when enqueued; NULL: none), and
    # the list computed at the first send attempt, or for a holdout episode when it would have been sent.
    recommendations_k: Mapped[int | None] = mapped_column(SmallInteger)
    recommended_at: Mapped[datetime | None] = mapped_column(TS)
    recommendations: Mapped[list | None] = mapped_column(JSONB)  # [{product_id, score, reason}]
    recommended_products: Mapped[list[str] | None] = mapped_column(ARRAY(String(256)))
    # The A/B/n variant of a treated episode, fixed when enqueued (migration 0024); NULL: holdout, opted out,
    # or enqueued before variants (the report counts those in the first variant).
    variant: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("campaign_deliveries_episode", "campaign", "user_key", "episode", "triggered_at", unique=True),
        Index("campaign_deliveries_idempotency_key_key", "idempotency_key", "triggered_at", unique=True),
        Index("campaign_deliveries_due", "next_attempt_at", postgresql_where="status = 'pending'"),
        Index("campaign_deliveries_user", "user_key", "sent_at"),
        Index("campaign_deliveries_counterfactual_due", "next_attempt_at", postgresql_where=(
            "status = 'holdout' AND recommendations_k IS NOT NULL AND recommended_at IS NULL")),
    )


class CampaignAttempt(Base):
    """Every delivery attempt with the receiver's answer."""

    __tablename__ = "campaign_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    # its delivery's triggered_at: the partition key, with the delivery's bounds (migration 0030)
    triggered_at: Mapped[datetime] = mapped_column(TS, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(TS)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (ForeignKeyConstraint(["delivery_id", "triggered_at"],
                                           ["campaign_deliveries.id", "campaign_deliveries.triggered_at"],
                                           ondelete="CASCADE"),)


class AuditLog(Base):
    """Privacy operations (erasure). The id is kept only as its HMAC-SHA256 under SPOOR_AUDIT_HMAC_KEY
    (migration 0026); rows written before it hold no hash at all (``user_key_hmac`` NULL)."""

    __tablename__ = "privacy_audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(32))
    user_key_hmac: Mapped[str | None] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    details: Mapped[dict] = mapped_column(JSONB)
    at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
