"""Tables of business-metric windows and metric alerts (migration 0005; notifications: 0013)."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from spoor.metric_columns import COUNTS
from spoor.storage.tables import MONEY, Base

TS = DateTime(timezone=True)


class MetricWindow(Base):
    """One closed window of one dimension, from one partition (sum the partitions for the total).

    Count columns: every name in ``alerts.series.COUNTS``. Written once; a rewrite is a no-op.
    """

    __tablename__ = "metric_windows"

    resolution: Mapped[str] = mapped_column(String(4), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    dimension: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_end: Mapped[datetime] = mapped_column(TS)
    revenue: Mapped[Decimal] = mapped_column(MONEY)
    partial: Mapped[bool] = mapped_column(Boolean)
    written_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


for _name in COUNTS:
    MetricWindow.__table__.append_column(Column(_name, BigInteger, nullable=False))


class MetricWatermark(Base):
    """Per events-topic partition: every window ending at or before ``closed_until`` is written."""

    __tablename__ = "metric_watermarks"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    closed_until: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class Alert(Base):
    """One episode of one alert series (fingerprint), from pending to resolved."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[str] = mapped_column(String(200))
    resolution: Mapped[str] = mapped_column(String(4))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(TS)
    fired_at: Mapped[datetime | None] = mapped_column(TS)
    resolved_at: Mapped[datetime | None] = mapped_column(TS)
    evidence: Mapped[dict] = mapped_column(JSONB)
    summary: Mapped[str | None] = mapped_column(Text)
    runbook: Mapped[str | None] = mapped_column(Text)
    acked_at: Mapped[datetime | None] = mapped_column(TS)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())

    __table_args__ = (UniqueConstraint("fingerprint", "started_at", name="alerts_episode"),)


class AlertNotification(Base):
    """One notification of one alert transition (firing, resolved) to one notifier: the outbox.

    Written in the transaction that stores the transition; pending while ``sent_at`` and ``failed_at``
    are NULL. ``next_attempt_at`` is when it may be tried next: a retry's backoff, or the end of the
    lease taken by the process sending it.
    """

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"))
    notifier: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    alert: Mapped[dict] = mapped_column(JSONB)  # the alert document at this transition (the row in alerts moves on)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(TS)
    failed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        UniqueConstraint("alert_id", "notifier", "status", name="alert_notifications_transition"),
        Index("alert_notifications_pending", "notifier", "id",
              postgresql_where="sent_at IS NULL AND failed_at IS NULL"),
    )


class AlertSilence(Base):
    """No notification for alerts whose rule id or fingerprint is ``matcher`` until ``until``."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    matcher: Mapped[str] = mapped_column(String(200))
    until: Mapped[datetime] = mapped_column(TS)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class AlertCursor(Base):
    """Per resolution: windows ending at or before ``evaluated_until`` were judged and their alerts stored."""

    __tablename__ = "alert_cursors"

    resolution: Mapped[str] = mapped_column(String(4), primary_key=True)
    evaluated_until: Mapped[datetime] = mapped_column(TS)
