"""Journey rows on the real PostgreSQL: written with their session, idempotent under redelivery, never
replaced by an older state, gone with a retired session, an erased user, and moved by an identity merge; the
migration that put them in their session's row (0033) keeps every row, both ways."""

import uuid
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from spoor.events import Event, EventKind
from spoor.storage.identities import move_rows
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.behaviour import AnalyticsRules
from tests.integration.test_retention import migrated_to_before
from tests.integration.test_retention_partitions import insert_session
from tests.support.scratch_db import ScratchDatabase

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
    # The journey is in its session's row (migration 0033): moved and erased with it.
    out, _ = folded([ev(1, EventKind.PRODUCT_VIEW, 0, user="anon-9", product_id="p")], user="anon-9")
    write(engine, out)
    with engine.begin() as conn:
        moved = move_rows(conn, "anon-9", "user-9")
    assert moved.get("sessions") == 1 and journey(engine, "user-9") and not journey(engine, "anon-9")
    StreamWriter(engine).write_batch([], [], None, ["user-9"])
    assert journey(engine, "user-9") is None


def test_the_migration_moves_each_journey_into_its_session_row_and_back(base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_journeys_{uuid.uuid4().hex[:10]}")
    engine = create_engine(db.url)
    rows = "SELECT * FROM session_journeys ORDER BY session_id"
    views = ("journey_steps", "journey_transitions_daily", "journey_exits_daily", "journey_depth_daily",
             "page_dwell_daily", "search_terms_daily")

    def view_rows(conn) -> dict:
        return {view: conn.execute(text(f"SELECT * FROM {view} ORDER BY 1, 2, 3")).all() for view in views}

    try:
        config = migrated_to_before(db.url, "0033")
        with engine.begin() as conn:
            for table in ("sessions", "session_journeys"):  # March's partition, as the retention job makes it
                conn.execute(text(f"CREATE TABLE {table}_p202603 PARTITION OF {table} "
                                  "FOR VALUES FROM ('2026-03-01 00:00+00') TO ('2026-04-01 00:00+00')"))
            for n, opened in enumerate((datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2011, 5, 1,
                                                                                           tzinfo=timezone.utc))):
                insert_session(conn, f"s{n}", opened, journey=False)  # 1 event; the second in the default partition
                conn.execute(text(
                    "INSERT INTO session_journeys VALUES (:u, :s, 1, 3, 1, '{1, 2.5}', '{home, search}', "
                    "'{NULL, NULL}', '{1.5, NULL}', '{next, NULL}', '{NULL, boots}', '{NULL, 0}', '{NULL, false}', "
                    "now(), :at)"), {"u": "u1", "s": f"s{n}", "at": opened})
            insert_session(conn, "s-before-0022", datetime(2026, 3, 2, tzinfo=timezone.utc), journey=False)
            before, before_views = conn.execute(text(rows)).all(), view_rows(conn)
        command.upgrade(config, "0033")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'session_journeys'")
                                ).scalar_one() == "v"
            assert conn.execute(text(rows)).all() == before  # the same columns, in the same order, and rows
            assert view_rows(conn) == before_views
            assert conn.execute(text("SELECT count(*) FROM sessions WHERE page_depth IS NULL")).scalar_one() == 1
        command.downgrade(config, "0032")
        with engine.connect() as conn:
            assert conn.execute(text(rows)).all() == before and view_rows(conn) == before_views
            placed = conn.execute(text(  # each journey in the partition of its session's bounds
                "SELECT j.tableoid::regclass::text, s.tableoid::regclass::text FROM session_journeys j "
                "JOIN sessions s USING (user_key, session_id, opened_at) ORDER BY session_id")).all()
            assert [(journeys, sessions.replace("sessions", "session_journeys")) for journeys, sessions in placed] == [
                ("session_journeys_p202603", "session_journeys_p202603"),
                ("session_journeys_default", "session_journeys_default")]
            assert conn.execute(text("SELECT count(*) FROM pg_inherits WHERE inhparent = "
                                     "CAST('session_journeys' AS regclass)")).scalar_one() == conn.execute(text(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = CAST('sessions' AS regclass)")).scalar_one()
            assert conn.execute(text("SELECT count(*) FROM information_schema.columns WHERE table_name = 'sessions' "
                                     "AND column_name = 'page_depth'")).scalar_one() == 0
        command.upgrade(config, "heads")
    finally:
        engine.dispose()
        db.drop()
