"""Tables of the behaviour analytics (migration 0008): sessions, and what it adds to user_activity.

``sessions`` is partitioned by month of ``opened_at`` (migration 0030, storage/retention.py). A session's row
holds its journey too (migration 0033): its steps as parallel arrays, one element per stored step in time order.
The view ``session_journeys`` shows them as the table of migration 0022 did, and the daily journey views (paths,
exits, dwell, search terms, page depth) read it; stream_processors/journeys.py says what a step and a dwell are."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ARRAY, BigInteger, Boolean, Column, Computed, DateTime, Float, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import MONEY, Base, UserActivity

# UTM source, else the referrer's host, else "direct".
TRAFFIC_SOURCE_SQL = ("coalesce(nullif(utm_source, ''), "
                      "lower(substring(referrer from '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)')), 'direct')")


class Session(Base):
    """One row per user session (see stream_processors/sessions.py for the rules)."""

    __tablename__ = "sessions"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The client's session id, or "t<start in epoch ms>" for a session found by inactivity.
    session_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The start the row was first keyed with (migration 0030): its partition, never changed (an inactivity
    # session's id is its start; a client session keeps it when a late event moves its start earlier).
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    client_session: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float] = mapped_column(Float)
    events: Mapped[int] = mapped_column(Integer)
    page_views: Mapped[int] = mapped_column(Integer)
    product_views: Mapped[int] = mapped_column(Integer)
    cart_adds: Mapped[int] = mapped_column(Integer)
    checkouts: Mapped[int] = mapped_column(Integer)
    purchases: Mapped[int] = mapped_column(Integer)
    revenue: Mapped[Decimal] = mapped_column(MONEY)
    reached_cart: Mapped[bool] = mapped_column(Boolean)
    reached_checkout: Mapped[bool] = mapped_column(Boolean)
    reached_purchase: Mapped[bool] = mapped_column(Boolean)
    entry_page: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_campaign: Mapped[str | None] = mapped_column(Text)
    utm_medium: Mapped[str | None] = mapped_column(Text)  # migration 0023 (channel attribution)
    view_categories: Mapped[list] = mapped_column(ARRAY(Text))
    cart_categories: Mapped[list] = mapped_column(ARRAY(Text))
    purchase_categories: Mapped[list] = mapped_column(ARRAY(Text))
    # The journey (migration 0033; NULL on a row written before 0022).
    page_depth: Mapped[int | None] = mapped_column(Integer)  # steps, stored or not
    steps_beyond: Mapped[int | None] = mapped_column(Integer)  # steps past the stored ones (journeys.MAX_RECORDS)
    step_times: Mapped[list | None] = mapped_column(ARRAY(Float))  # epoch seconds
    page_type: Mapped[list | None] = mapped_column(ARRAY(Text))
    product_id: Mapped[list | None] = mapped_column(ARRAY(Text))
    dwell_s: Mapped[list | None] = mapped_column(ARRAY(Float))  # NULL: the last step, without a visible time
    dwell_source: Mapped[list | None] = mapped_column(ARRAY(Text))  # "visible", "next" or NULL
    search_term: Mapped[list | None] = mapped_column(ARRAY(Text))
    result_count: Mapped[list | None] = mapped_column(ARRAY(BigInteger))
    cart_add_after: Mapped[list | None] = mapped_column(ARRAY(Boolean))  # of a search step: a cart add followed
    traffic_source: Mapped[str] = mapped_column(Text, Computed(TRAFFIC_SOURCE_SQL, persisted=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # No index on started_at: nothing reads one, and the worker inserts a row here every few events (migration 0032).


# Columns migration 0008 adds to the user_activity contract table.
for _column in (Column("last_seen_at", DateTime(timezone=True)), Column("last_purchase_at", DateTime(timezone=True)),
                Column("recency_days", Integer)):
    if _column.name not in UserActivity.__table__.c:
        UserActivity.__table__.append_column(_column)
