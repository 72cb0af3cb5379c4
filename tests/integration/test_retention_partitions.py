"""Retention of sessions, deliveries and attribution by time partitions (migration 0030, storage/retention.py) on
the real PostgreSQL: expired partitions dropped with their companions' (journeys, attempts), live ones kept, the
margin for sessions still updated, rows waiting in default partitions moved with their companions' rows and
foreign keys intact, and a late event that updates an old session landing in its row."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text

from spoor.events import Event, EventKind
from spoor.storage.identities import move_rows
from spoor.storage.migrate import upgrade
from spoor.storage.retention import run_retention
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.behaviour import AnalyticsRules
from spoor.stream_processors.sessions import Session
from tests.support.scratch_db import ScratchDatabase

pytestmark = pytest.mark.integration
UTC = timezone.utc
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_retention_{uuid.uuid4().hex[:10]}")
    upgrade(db.url)
    engine = create_engine(db.url)
    yield engine, base_settings.model_copy(update={"database_url": db.url})
    engine.dispose()
    db.drop()


def partitions(conn, table: str) -> list[str]:
    return sorted(conn.execute(text("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                    "WHERE i.inhparent = CAST(:t AS regclass)"), {"t": table}).scalars())


def insert_session(conn, session_id: str, opened: datetime, user: str = "u1", journey: bool = True) -> None:
    """A session's row with its journey of one step (migration 0033); ``journey=False``: the session's columns
    alone, for a schema from before 0033."""
    journey_columns, journey_values = ("", "")
    if journey:
        journey_columns = (", page_depth, steps_beyond, step_times, page_type, product_id, dwell_s, dwell_source, "
                           "search_term, result_count, cart_add_after")
        journey_values = ", 1, 0, '{0}', '{home}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}'"
    conn.execute(text(
        "INSERT INTO sessions (user_key, session_id, opened_at, client_session, started_at, ended_at, duration_s, "
        "events, page_views, product_views, cart_adds, checkouts, purchases, revenue, reached_cart, reached_checkout, "
        f"reached_purchase, view_categories, cart_categories, purchase_categories{journey_columns}) VALUES (:u, :s, "
        f":at, true, :at, :at, 0, 1, 1, 0, 0, 0, 0, 0, false, false, false, '{{}}', '{{}}', '{{}}'{journey_values})"),
        {"u": user, "s": session_id, "at": opened})


def insert_delivery(conn, episode: str, triggered: datetime, attempts: int = 1) -> int:
    conn.execute(text("INSERT INTO campaigns (name, definition, status) VALUES ('c', '{}', 'active') "
                      "ON CONFLICT DO NOTHING"))
    delivery = conn.execute(text(
        "INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at, due_at, status, "
        "attempts, next_attempt_at) VALUES ('c', 'u1', :k, :k, :at, :at, 'sent', 1, :at) RETURNING id"),
        {"k": episode, "at": triggered}).scalar_one()
    for attempt in range(1, attempts + 1):
        conn.execute(text("INSERT INTO campaign_attempts (delivery_id, triggered_at, attempt, at) "
                          "VALUES (:d, :t, :n, :t)"), {"d": delivery, "t": triggered, "n": attempt})
    return delivery


def insert_attribution(conn, conversion: str, converted: datetime) -> None:
    conn.execute(text("INSERT INTO order_attribution (user_key, conversion_id, model, touch, kind, converted_at, "
                      "channel, amount) VALUES ('u1', :c, 'last_touch', 0, 'order', :at, 'direct', 10)"),
                 {"c": conversion, "at": converted})


def column(conn, sql: str) -> list:
    return sorted(conn.execute(text(sql)).scalars())


def test_expired_partitions_go_with_their_companions_and_live_ones_stay(database):
    engine, defaults = database
    settings = defaults.model_copy(update={"retention_sessions_days": 60, "retention_deliveries_days": 60,
                                           "retention_order_attribution_days": 60})
    old, live = datetime(2026, 5, 20, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    for then in (old, live):  # the runs of those days made their partitions
        run_retention(engine, defaults, now=then)
    with engine.begin() as conn:
        insert_session(conn, "s-old", old)
        insert_session(conn, "s-live", live)
        insert_delivery(conn, "e-old", old, attempts=2)
        live_delivery = insert_delivery(conn, "e-live", live, attempts=2)
        insert_attribution(conn, "o-old", old)
        insert_attribution(conn, "o-live", live)
        assert conn.execute(text("SELECT tableoid::regclass::text FROM campaign_attempts WHERE triggered_at = :t "
                                 "LIMIT 1"), {"t": old}).scalar_one() == "campaign_attempts_p202605"

    reports = {r.store: r for r in run_retention(engine, settings, now=NOW)}

    # cutoff 2026-10-04 (less 12 hours for sessions): May to August go, whole, with their companions' partitions
    months = ("202605", "202606", "202607", "202608")
    assert reports["sessions"].dropped == [f"sessions_p{m}" for m in months]  # the journeys in their rows (0033)
    assert reports["campaign_deliveries"].dropped == [f"{t}_p{m}" for m in months
                                                      for t in ("campaign_deliveries", "campaign_attempts")]
    assert reports["order_attribution"].dropped == [f"order_attribution_p{m}" for m in months]
    assert all(not r.error and not r.rows_deleted for r in reports.values())
    with engine.connect() as conn:
        assert column(conn, "SELECT session_id FROM sessions") == ["s-live"]
        assert column(conn, "SELECT session_id FROM session_journeys") == ["s-live"]
        assert column(conn, "SELECT episode FROM campaign_deliveries") == ["e-live"]
        assert column(conn, "SELECT delivery_id FROM campaign_attempts") == [live_delivery, live_delivery]
        assert column(conn, "SELECT conversion_id FROM order_attribution") == ["o-live"]
        for table in ("sessions", "campaign_deliveries", "campaign_attempts", "order_attribution"):
            assert f"{table}_p202611" in partitions(conn, table) and f"{table}_p202605" not in partitions(conn, table)
            assert f"{table}_p202703" in partitions(conn, table)  # made ahead
    with engine.begin() as conn:  # the foreign key still holds, and still cascades
        with pytest.raises(Exception, match="foreign key"):
            with conn.begin_nested():
                conn.execute(text("INSERT INTO campaign_attempts (delivery_id, triggered_at, attempt, at) "
                                  "VALUES (-1, :t, 1, :t)"), {"t": live})
        conn.execute(text("DELETE FROM campaign_deliveries WHERE episode = 'e-live'"))
        assert conn.execute(text("SELECT count(*) FROM campaign_attempts")).scalar_one() == 0
    assert all(not r.dropped and not r.created for r in run_retention(engine, settings, now=NOW))  # idempotent


def test_a_sessions_partition_is_kept_while_its_sessions_can_still_be_updated(database):
    engine, defaults = database
    settings = defaults.model_copy(update={"retention_sessions_days": 60})
    run_retention(engine, defaults, now=datetime(2026, 9, 10, tzinfo=UTC))
    with engine.begin() as conn:
        insert_session(conn, "s-sept", datetime(2026, 9, 30, 23, tzinfo=UTC))
    # September's range ends 10-01; 60 days later is 11-30 00:00; the margin is 12 hours (30 min inactivity or
    # 6 h lateness, the larger, plus the 6 h lateness)
    within = run_retention(engine, settings, now=datetime(2026, 11, 30, 11, 59, tzinfo=UTC))
    assert {r.store: r for r in within}["sessions"].dropped == []
    past = run_retention(engine, settings, now=datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    assert {r.store: r for r in past}["sessions"].dropped == ["sessions_p202609"]


def test_rows_in_the_default_partitions_move_with_their_attempts(database):
    engine, settings = database
    run_retention(engine, settings, now=NOW)
    spring, ancient = datetime(2026, 4, 15, tzinfo=UTC), datetime(2011, 5, 1, tzinfo=UTC)  # no partition of theirs
    with engine.begin() as conn:
        spring_id = insert_delivery(conn, "e-spring", spring, attempts=3)
        insert_delivery(conn, "e-ancient", ancient, attempts=1)
        insert_session(conn, "s-spring", spring)
        insert_session(conn, "s-ancient", ancient)
        assert conn.execute(text("SELECT count(*) FROM campaign_attempts_default")).scalar_one() == 4
    reports = {r.store: r for r in run_retention(engine, settings, now=NOW)}
    # past retention (395 and 730 days): deleted from the default partitions; the others moved, companions too
    assert (reports["campaign_deliveries"].rows_moved, reports["campaign_deliveries"].rows_deleted) == (4, 2)
    assert (reports["sessions"].rows_moved, reports["sessions"].rows_deleted) == (1, 1)  # journeys in their rows
    assert {"campaign_deliveries_p202604", "campaign_attempts_p202604"} <= set(reports["campaign_deliveries"].created)
    with engine.connect() as conn:
        placed = conn.execute(text("SELECT DISTINCT tableoid::regclass::text FROM campaign_attempts")).scalars().all()
        assert placed == ["campaign_attempts_p202604"]
        assert conn.execute(text("SELECT count(*) FROM campaign_attempts WHERE delivery_id = :d"),
                            {"d": spring_id}).scalar_one() == 3  # the cascade found none of them while they moved
        assert column(conn, "SELECT session_id FROM session_journeys") == ["s-spring"]  # moved with its session
        assert column(conn, "SELECT tableoid::regclass::text FROM sessions") == ["sessions_p202604"]
        assert column(conn, "SELECT episode FROM campaign_deliveries") == ["e-spring"]


T_OPEN = datetime(2026, 3, 1, 0, 10, tzinfo=UTC)  # a session opened just after a month began


def ev(n: int, at: datetime, user: str = "u1", session_id: str | None = "s1") -> Event:
    return Event(event_id=f"{user}-{n}", kind=EventKind.PAGE_VIEW, name="page", user_key=user, event_time=at,
                 received_at=at, session_id=session_id, page_url=f"https://shop.example/{n}")


async def nothing(*args):
    pass


def fold_and_write(engine, events: list[Event], state: bytes | None, user: str = "u1", times: int = 1) -> bytes:
    """Folds the user's events into their state and writes the batch's rows (``times`` over: redelivered)."""
    tracker = AnalyticsTracker(AnalyticsRules(), 1, nothing)
    value = tracker.fold(user, b"{}", state, events, events)
    out = tracker.take_output()
    for _ in range(times):
        StreamWriter(engine).write_batch([], [], out)
    return value.split(b"\n", 2)[2]


def session_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT s.session_id, s.opened_at, s.started_at, s.events, s.tableoid::regclass::text, j.events "
            "FROM sessions s "
            "JOIN session_journeys j USING (user_key, session_id, opened_at) ORDER BY 1")).all()


def test_a_late_event_updating_an_old_session_lands_in_its_row(database):
    engine, settings = database
    run_retention(engine, settings, now=T_OPEN - timedelta(days=40))  # January to April
    state = fold_and_write(engine, [ev(1, T_OPEN), ev(2, T_OPEN + timedelta(minutes=5))], None)
    # A late event (2 hours early, within the 6-hour lateness) moves the client session's start into February:
    # its row stays the one it was keyed with, in March's partition, and takes the event.
    late = T_OPEN - timedelta(hours=2)
    state = fold_and_write(engine, [ev(3, late)], state, times=2)  # written twice: redelivered, the same row
    assert session_rows(engine) == [("s1", T_OPEN, late, 3, "sessions_p202603", 3)]
    # A second late event and a retention run that drops nothing live: still one row
    run_retention(engine, settings, now=T_OPEN + timedelta(days=1))
    fold_and_write(engine, [ev(4, late - timedelta(minutes=1))], state)
    assert [r[:4] for r in session_rows(engine)] == [("s1", T_OPEN, late - timedelta(minutes=1), 4)]


def test_a_late_event_moving_an_inactivity_session_gives_it_a_new_row_in_its_month(database):
    engine, settings = database
    run_retention(engine, settings, now=T_OPEN - timedelta(days=40))
    state = fold_and_write(engine, [ev(1, T_OPEN, session_id=None)], None)
    assert [r[0] for r in session_rows(engine)] == [f"t{int(T_OPEN.timestamp() * 1000)}"]
    late = T_OPEN - timedelta(minutes=20)  # within the inactivity gap: the same session, started in February
    fold_and_write(engine, [ev(2, late, session_id=None)], state)
    assert session_rows(engine) == [(f"t{int(late.timestamp() * 1000)}", late, late, 2, "sessions_p202602", 2)
                                    ]  # the old id's row retired, in March's


def test_a_merge_keeps_one_row_of_a_client_session_both_keys_opened(database):
    engine, settings = database
    run_retention(engine, settings, now=T_OPEN - timedelta(days=40))
    anon = fold_and_write(engine, [ev(1, T_OPEN, user="anon-1")], None, user="anon-1")
    user = fold_and_write(engine, [ev(2, T_OPEN + timedelta(minutes=3), user="user-1")], None, user="user-1")
    assert anon and user
    with engine.begin() as conn:  # the user's row and the anonymous id's have different opened_at
        move_rows(conn, "anon-1", "user-1")
        rows = conn.execute(text("SELECT user_key, opened_at FROM sessions")).all()
    assert rows == [("user-1", T_OPEN + timedelta(minutes=3))]  # the anonymous row gave way, as before


def test_a_state_stored_before_the_partitions_keys_its_row_by_its_start():
    session = Session("s1", True, 100.0, 200.0)
    data = session.encode()[:-1]  # a state written before migration 0030 has no opened time
    assert Session.decode(data).opened_at == 100.0
    moved = Session.decode(session.encode())
    moved.started_at = 50.0
    assert Session.decode(moved.encode()).opened_at == 100.0
    assert Session("t1772000000123", False, 1_772_000_000.123, 1_772_000_000.123).opened_at == 1_772_000_000.123


def test_the_migration_converts_sessions_deliveries_and_attribution_that_hold_rows(base_settings):
    from alembic import command

    from tests.integration.test_retention import migrated_to_before

    db = ScratchDatabase(base_settings.database_url, f"spoor_migration_{uuid.uuid4().hex[:10]}")
    engine = create_engine(db.url)
    try:
        config = migrated_to_before(db.url, "0030")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO sessions (user_key, session_id, client_session, started_at, ended_at, duration_s, events, "
                "page_views, product_views, cart_adds, checkouts, purchases, revenue, reached_cart, reached_checkout, "
                "reached_purchase, view_categories, cart_categories, purchase_categories, utm_source) "
                "SELECT 'u' || i, 's' || i, false, TIMESTAMPTZ '2026-12-03Z' - i * interval '1 day', "
                "TIMESTAMPTZ '2026-12-03Z', 0, 1, 1, 0, 0, 0, 0, 0, false, false, false, '{}', '{}', '{}', "
                "CASE WHEN i % 2 = 0 THEN 'news' END FROM generate_series(1, 500) i"))
            conn.execute(text("INSERT INTO session_journeys SELECT 'u' || i, 's' || i, 1, 1, 0, '{0}', '{home}', "
                              "'{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}' "
                              "FROM generate_series(1, 500) i"))
            conn.execute(text("INSERT INTO campaigns (name, definition, status) VALUES ('c', '{}', 'active')"))
            conn.execute(text(
                "INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at, due_at, "
                "status, attempts, next_attempt_at) SELECT 'c', 'u' || i, 'e' || i, 'k' || i, "
                "TIMESTAMPTZ '2026-12-03Z' - i * interval '1 day', now(), 'sent', 1, now() "
                "FROM generate_series(1, 300) i"))
            conn.execute(text("INSERT INTO campaign_attempts (delivery_id, attempt, at) "
                              "SELECT id, n, now() FROM campaign_deliveries, generate_series(1, 2) n"))
            conn.execute(text(
                "INSERT INTO order_attribution (user_key, conversion_id, model, touch, kind, converted_at, channel, "
                "amount) SELECT 'u' || i, 'o' || i, 'last_touch', 0, 'order', "
                "TIMESTAMPTZ '2026-12-03Z' - i * interval '1 day', 'direct', 1 FROM generate_series(1, 300) i"))
            views = conn.execute(text("SELECT count(*) FROM journey_depth_daily")).scalar_one()
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            counts = {t: conn.execute(text(f"SELECT count(*), (SELECT count(*) FROM {t}_default) FROM {t}")).one()
                      for t in ("sessions", "campaign_deliveries", "campaign_attempts", "order_attribution")}
            assert counts == {"sessions": (500, 0), "campaign_deliveries": (300, 0),
                              "campaign_attempts": (600, 0), "order_attribution": (300, 0)}
            # each journey in its session's row (migration 0033), shown by the view
            assert conn.execute(text("SELECT count(*) FROM session_journeys")).scalar_one() == 500
            assert conn.execute(text("SELECT count(*) FROM sessions WHERE opened_at = started_at AND "
                                     "traffic_source = 'news'")).scalar_one() == 250  # still computed
            assert conn.execute(text("SELECT count(*) FROM campaign_attempts a JOIN campaign_deliveries d "
                                     "ON d.id = a.delivery_id AND d.triggered_at = a.triggered_at")).scalar_one() == 600
            assert conn.execute(text("SELECT count(*) FROM journey_depth_daily")).scalar_one() == views
            assert "sessions_p202512" in partitions(conn, "sessions")  # 2026-12-03 less 500 days: 2025-07-21 on
            assert conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'sessions_p202601'")
                                ).scalar_one() == ["fillfactor=50"]  # 70 here, 50 since 0032
        with engine.begin() as conn:  # the sequences went with the tables; the campaign still cascades
            insert_delivery(conn, "e-new", datetime(2026, 12, 2, tzinfo=UTC), attempts=1)
            conn.execute(text("DELETE FROM campaigns WHERE name = 'c'"))
            assert conn.execute(text("SELECT count(*) FROM campaign_attempts")).scalar_one() == 0
        command.downgrade(config, "0029")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'sessions'")).scalar_one() == "r"
            assert conn.execute(text("SELECT count(*) FROM session_journeys")).scalar_one() == 500
            assert conn.execute(text("SELECT count(*) FROM order_attribution")).scalar_one() == 300
        command.upgrade(config, "heads")
    finally:
        engine.dispose()
        db.drop()


def test_an_episode_older_than_the_deliveries_retention_is_not_enqueued_again(database):
    from spoor.campaigns.campaign_dispatch import CampaignStore, enqueue
    from spoor.campaigns.campaign_spec import parse_campaign
    from tests.support.segments_data import put_trigger

    engine, settings = database
    settings = settings.model_copy(update={"retention_deliveries_days": 60})
    launched = NOW - timedelta(days=400)
    run_retention(engine, settings, now=launched)
    store = CampaignStore(engine)
    store.save(parse_campaign({"name": "rescue", "audience": {"trigger": "cart_abandonment"},
                               "action": {"webhook": "http://127.0.0.1:9/hook"}}))
    store.launch("rescue", launched)
    put_trigger(engine, "cart_abandonment", "u1", "1", launched + timedelta(days=1))
    assert enqueue(engine, launched + timedelta(days=2)) == 1
    run_retention(engine, settings, now=NOW)  # its delivery's partition goes; the trigger stays
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaign_deliveries")).scalar_one() == 0
    kept_since = NOW - timedelta(days=settings.retention_deliveries_days)  # as the campaigns runner passes it
    assert enqueue(engine, NOW, kept_since=kept_since) == 0  # not sent a second time
    put_trigger(engine, "cart_abandonment", "u1", "2", NOW - timedelta(days=1))
    assert enqueue(engine, NOW, kept_since=kept_since) == 1  # a recent episode is
