"""Tables of the journeys (migration 0022): one row per session with its steps as parallel arrays.

Written with the session's row (storage/analytics_writer.py), by the same rules: a row never replaces
one with more events, and a retired session's row goes. Partitioned as its session, on the
session's ``opened_at`` (migration 0030). The daily views (paths, exits, dwell, search
terms, page depth, repeat purchases) are the migration's; stream_processors/journeys.py says what a
step and a dwell time are.
"""

from datetime import datetime

from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Float, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import Base


class SessionJourney(Base):
    __tablename__ = "session_journeys"

    user_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)  # its session's (0030)
    events: Mapped[int] = mapped_column(Integer)  # the session's events when written: the row's version
    page_depth: Mapped[int] = mapped_column(Integer)  # steps, stored or not
    steps_beyond: Mapped[int] = mapped_column(Integer)  # steps past the stored ones (journeys.MAX_RECORDS)
    # One element per stored step, in time order.
    step_times: Mapped[list] = mapped_column(ARRAY(Float))  # epoch seconds
    page_type: Mapped[list] = mapped_column(ARRAY(Text))
    product_id: Mapped[list] = mapped_column(ARRAY(Text))
    dwell_s: Mapped[list] = mapped_column(ARRAY(Float))  # NULL: the last step, without a visible time
    dwell_source: Mapped[list] = mapped_column(ARRAY(Text))  # "visible", "next" or NULL
    search_term: Mapped[list] = mapped_column(ARRAY(Text))
    result_count: Mapped[list] = mapped_column(ARRAY(BigInteger))
    cart_add_after: Mapped[list] = mapped_column(ARRAY(Boolean))  # of a search step: a cart add followed
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
