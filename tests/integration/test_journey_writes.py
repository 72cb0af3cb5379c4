"""Journey rows on the real PostgreSQL: written with their session, idempotent under redelivery, never
replaced by an older state, gone with a retired session, an erased user, and moved by an identity merge."""

from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from spoor.events import Event, EventKind
from spoor.storage.identities import move_rows
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.behaviour import AnalyticsRules

pytestmark = pytest.mark.integration
T0 = 1_772_000_000.0


def ev(n: int, kind: EventKind, at: float, user: str = "u1", **fields) -> Event:
    when = datetime.fromtimestamp(T0 + at, timezone.utc)
    return Event(event_id=f"{user}-{n}", kind=kind, name=kind.value, user_key=user, event_time=when,
                 received_at=when, session_id="s1", **fields)


async def nothing(*args):
    pass


def folded(events: list[Event], user: str = "u1", state: bytes | None = None):
    """(the batch's analytics output, the user's next state) after ``events``."""
    tracker = AnalyticsTracker(AnalyticsRules(), 1, nothing)
    value = tracker.fold(user, b"{}", state, events, events)
    return tracker.take_output(), value.split(b"\n", 2)[2]


def write(engine, out) -> None:
    StreamWriter(engine).write_batch([], [], out)


def journey(engine, user: str = "u1") -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM session_journeys WHERE user_key = :u"), {"u": user}).mappings().first()
    return dict(row) if row else None


def test_journey_rows_follow_their_session(engine):
    first = [ev(1, EventKind.PRODUCT_VIEW, 0, product_id="p1"),
             ev(2, EventKind.CUSTOM, 5, visible_ms=4200)]
    out1, state = folded(first)
    out2, _ = folded([ev(3, EventKind.CART_ADD, 30, product_id="p1")], state=state)
    write(engine, out1)
    write(engine, out2)
    row = journey(engine)
    assert (row["events"], row["page_depth"], row["page_type"], row["dwell_s"], row["dwell_source"]) == (
        3, 2, ["product", "cart"], [4.2, None], ["visible", None])
    write(engine, out2)  # redelivered: the same row
    write(engine, out1)  # an older state (fewer events): ignored
    assert journey(engine)["page_type"] == ["product", "cart"] and journey(engine)["events"] == 3
    with engine.connect() as conn:
        steps = conn.execute(text("SELECT step, page_type, last_step, next_type FROM journey_steps "
                                  "WHERE user_key = 'u1' ORDER BY step")).all()
    assert [tuple(s) for s in steps] == [(1, "product", False, "cart"), (2, "cart", True, None)]


def test_a_retired_session_loses_its_journey_row(engine):
    # Inactivity sessions: a late event moves the session's start, so its id changes and the old row goes.
    def plain(n, at):
        when = datetime.fromtimestamp(T0 + at, timezone.utc)
        return Event(event_id=f"u2-{n}", kind=EventKind.PRODUCT_VIEW, name="x", user_key="u2", event_time=when,
                     received_at=when)
    out1, state = folded([plain(1, 600)], user="u2")
    write(engine, out1)
    out2, _ = folded([plain(2, 0)], user="u2", state=state)
    assert out2.retired_sessions
    write(engine, out2)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT session_id, page_depth FROM session_journeys WHERE user_key = 'u2'")).all()
    assert [tuple(r) for r in rows] == [(f"t{round(T0 * 1000)}", 2)]


def test_erasure_and_identity_merges_reach_the_journey_rows(engine):
    out, _ = folded([ev(1, EventKind.PRODUCT_VIEW, 0, user="anon-9", product_id="p")], user="anon-9")
    write(engine, out)
    with engine.begin() as conn:
        moved = move_rows(conn, "anon-9", "user-9")
    assert moved.get("session_journeys") == 1 and journey(engine, "user-9") and not journey(engine, "anon-9")
    StreamWriter(engine).write_batch([], [], None, ["user-9"])
    assert journey(engine, "user-9") is None
