"""Channel attribution of orders (migration 0023, docs/attribution.md).

``order_attribution`` holds, for every order and refund of a person, each model's share of its amount
per touch (a session in the look-back window). The segments runner rewrites all the rows of the people
changed since its last pass (segments/attribution.py), so late sessions and refunds are exact by
recomputation. Rows are a person's data: a merge deletes the merged id's rows (storage/identities.py,
the runner attributes the person's orders again), erasure deletes them (privacy/erasure.py finds the
table by its ``user_key``).
"""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import MONEY, Base


class OrderAttribution(Base):
    __tablename__ = "order_attribution"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    conversion_id: Mapped[str] = mapped_column(String(256), primary_key=True)  # the order's or refund's event id
    model: Mapped[str] = mapped_column(String(16), primary_key=True)
    touch: Mapped[int] = mapped_column(Integer, primary_key=True)  # position among the conversion's touches
    kind: Mapped[str] = mapped_column(String(8))  # order | refund
    order_id: Mapped[str | None] = mapped_column(String(256))
    # the conversion's event time: the partition key (migration 0030, monthly; storage/retention.py)
    converted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    currency: Mapped[str | None] = mapped_column(String(3))
    session_id: Mapped[str | None] = mapped_column(String(256))  # NULL: no session in the window (direct)
    channel: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal] = mapped_column(MONEY)  # this touch's share; negative for a refund
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("order_attribution_model_time", "model", "converted_at"),)


# The view attribution_revenue_daily (migration 0023): revenue by UTC day, model, channel and currency, for
# Grafana and reports: orders credited (an order split over two sessions of one channel counts once),
# revenue (orders), refunded (positive) and net_revenue.
