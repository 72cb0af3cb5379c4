"""Retention on the real PostgreSQL (storage/retention.py, migration 0027): partitions made ahead, partitions
past retention dropped with their rows and nothing else touched, events still deduplicated across partition
boundaries, rows outside every partition handled, a busy table left for the next run, and the migration
converting tables that hold rows."""

import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from spoor.events import Event, EventKind
from spoor.storage import retention
from spoor.storage.identities import TABLES_WITH_USER_KEY
from spoor.storage.interests import fold_product_deltas
from spoor.storage.migrate import config as alembic_config
from spoor.storage.migrate import upgrade
from spoor.storage.retention import run_retention
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, interest_batch
from tests.integration.test_retention_partitions import insert_delivery, insert_session
from tests.support.scratch_db import ScratchDatabase

pytestmark = pytest.mark.integration
UTC = timezone.utc
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
STORES = ["events", "dead_letters", "sessions", "campaign_deliveries", "order_attribution"]


@pytest.fixture
def database(base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_retention_{uuid.uuid4().hex[:10]}")
    upgrade(db.url)
    engine = create_engine(db.url)
    yield engine, base_settings.model_copy(update={"database_url": db.url})
    engine.dispose()
    db.drop()


def ev(event_id: str, at: datetime, user: str = "u1", product: str = "p1") -> Event:
    return Event(event_id=event_id, kind=EventKind.PRODUCT_VIEW, name="Product Viewed", user_key=user,
                 event_time=at, received_at=at, source="web", product_id=product)


def write(engine, events: list[Event]) -> None:
    StreamWriter(engine).write_batch([], events, interests=interest_batch(events, 30 * DAY_S, 3 * DAY_S))
    fold_product_deltas(engine)  # the segments runner's fold of the product rows (migration 0031)


def partitions(conn, table: str) -> list[str]:
    return sorted(conn.execute(text("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                    "WHERE i.inhparent = CAST(:t AS regclass)"), {"t": table}).scalars())


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def insert_dead_letter(conn, dead_id: str, at: datetime) -> None:
    conn.execute(text("INSERT INTO dead_letters (id, processor, reason, payload, received_at) "
                      "VALUES (:i, 'collector', 'bad', '{\"userId\": \"u1\"}', :at)"), {"i": dead_id, "at": at})


def test_partitions_are_made_ahead(database):
    engine, settings = database
    run_retention(engine, settings, now=NOW)
    with engine.connect() as conn:
        events = partitions(conn, "events")
        dead = partitions(conn, "dead_letters")
    assert {"events_p202612", "events_p202701", "events_p202702", "events_p202703", "events_default"} <= set(events)
    assert {f"dead_letters_p202612{d:02d}" for d in range(3, 11)} <= set(dead)
    # A later run moves on with the calendar; running twice changes nothing.
    later = NOW + timedelta(days=40)
    first = run_retention(engine, settings, now=later)
    again = run_retention(engine, settings, now=later)
    assert "events_p202704" in first[0].created
    assert all(not r.created and not r.dropped and not r.rows_deleted and not r.error for r in again)


def test_expired_partitions_are_dropped_with_their_rows_and_nothing_else(database):
    engine, defaults = database
    settings = defaults.model_copy(update={"retention_events_days": 60, "retention_dead_letters_days": 7,
                                           "retention_sessions_days": 60, "retention_deliveries_days": 60})
    old, kept, edge = NOW - timedelta(days=200), NOW - timedelta(days=10), datetime(2026, 10, 10, tzinfo=UTC)
    for then in (old, NOW - timedelta(days=9)):  # the runs of those days made their partitions
        run_retention(engine, defaults, now=then)
    write(engine, [ev("old-1", old), ev("old-2", old + timedelta(hours=1), user="u2"), ev("kept-1", kept),
                   ev("edge-1", edge)])  # edge: in retention (cutoff 2026-10-04), no partition yet
    with engine.begin() as conn:
        insert_dead_letter(conn, "dl-old", NOW - timedelta(days=9))
        insert_dead_letter(conn, "dl-kept", NOW - timedelta(days=6))
        # no partition of theirs for the old ones (September): they wait in the default partitions
        for session, started in (("s-old", NOW - timedelta(days=90)), ("s-kept", NOW - timedelta(days=3))):
            insert_session(conn, session, started)
        for key, created in (("old", NOW - timedelta(days=90)), ("kept", NOW - timedelta(days=5))):
            insert_delivery(conn, key, created)
        before = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                  for table in ("user_profiles", "user_interests", "product_popularity", "behaviour_triggers")}
        interests_before = conn.execute(text("SELECT sum(weight) FROM user_interests")).scalar_one()
    dropped_before = metric("spoor_retention_partitions_dropped_total", store="events")

    reports = {r.store: r for r in run_retention(engine, settings, now=NOW)}

    # Cutoffs: events 2026-10-04 (May to August go, whole; September ends 10-01, so it is not there);
    # dead letters 2026-11-26 (the days made from 11-24 on: 24 and 25 go).
    assert reports["events"].dropped == ["events_p202605", "events_p202606", "events_p202607", "events_p202608"]
    assert reports["dead_letters"].dropped == ["dead_letters_p20261124", "dead_letters_p20261125"]
    # the old session (its journey in its row, migration 0033) and delivery with its attempt, from the defaults
    assert reports["sessions"].rows_deleted == 1 and reports["campaign_deliveries"].rows_deleted == 2
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT event_id FROM events")).scalars()) == ["edge-1", "kept-1"]
        assert "events_p202605" not in partitions(conn, "events")
        assert conn.execute(text("SELECT array_agg(id) FROM dead_letters")).scalar_one() == ["dl-kept"]
        assert conn.execute(text("SELECT array_agg(session_id) FROM sessions")).scalar_one() == ["s-kept"]
        assert conn.execute(text("SELECT array_agg(session_id) FROM session_journeys")).scalar_one() == ["s-kept"]
        assert conn.execute(text("SELECT array_agg(episode) FROM campaign_deliveries")).scalar_one() == ["kept"]
        assert conn.execute(text("SELECT count(*) FROM campaign_attempts")).scalar_one() == 1  # cascaded
        after = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in before}
        assert after == before  # what was derived from the events stays: only the stores' own rows go
        assert conn.execute(text("SELECT sum(weight) FROM user_interests")).scalar_one() == interests_before
    assert metric("spoor_retention_partitions_dropped_total", store="events") == dropped_before + 4
    assert metric("spoor_retention_partitions", store="events") >= 5
    assert metric("spoor_retention_bytes", store="events") > 0
    assert metric("spoor_retention_oldest_age_seconds", store="events") == (
        NOW - datetime(2026, 10, 1, tzinfo=UTC)).total_seconds()  # edge-1's partition, made for it
    assert metric("spoor_retention_last_run_timestamp_seconds") > 0
    with engine.connect() as conn:
        conn.execute(text("ANALYZE events"))
        conn.commit()
    events_store = next(s for s in retention.stores(settings) if s.name == "events")
    assert retention.observe(engine, events_store, NOW)["rows_estimate"] == 2  # partitions counted once


def test_a_redelivered_event_is_still_deduplicated_across_a_partition_boundary(database):
    engine, settings = database
    last_instant = datetime(2026, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    batch = [ev("b-1", last_instant), ev("b-2", last_instant - timedelta(seconds=1), product="p2")]
    write(engine, batch)
    with engine.connect() as conn:
        weights = conn.execute(text("SELECT user_key, facet, value, weight FROM user_interests ORDER BY 1, 2, 3")).all()
    run_retention(engine, settings, now=datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))  # the next month's turn
    write(engine, batch)  # a redelivery: the same records, the same times
    # A client's retry through the collector: same id, a clock-corrected time a few ms later, in January.
    write(engine, [ev("b-1", last_instant + timedelta(milliseconds=5)),
                   ev("b-1", last_instant + timedelta(hours=1))])  # two copies in one batch, too
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, event_time, tableoid::regclass::text FROM events "
                                 "ORDER BY 1")).all()
        assert [(r[0], r[2]) for r in rows] == [("b-1", "events_p202612"), ("b-2", "events_p202612")]
        assert rows[0][1] == last_instant
        assert conn.execute(text("SELECT user_key, facet, value, weight FROM user_interests "
                                 "ORDER BY 1, 2, 3")).all() == weights  # interests added once
    # Same id two days apart: beyond the one-day span, a different event as far as the write can tell.
    write(engine, [ev("b-1", last_instant + timedelta(days=2))])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events WHERE event_id = 'b-1'")).scalar_one() == 2


def test_rows_outside_every_partition_wait_in_the_default_partition(database):
    engine, settings = database
    write(engine, [ev("ancient", datetime(2011, 5, 1, tzinfo=UTC)),          # a replayed data set
                   ev("spring", datetime(2026, 4, 15, tzinfo=UTC)),           # in retention, no partition yet
                   ev("far", datetime(2027, 9, 1, tzinfo=UTC))])             # later than the partitions ahead
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events_default")).scalar_one() == 3
    report = run_retention(engine, settings, now=NOW)[0]
    assert report.rows_deleted == 1 and report.rows_moved == 1 and "events_p202604" in report.created
    with engine.connect() as conn:
        placed = dict(conn.execute(text("SELECT event_id, tableoid::regclass::text FROM events")).all())
    assert placed == {"spring": "events_p202604", "far": "events_default"}
    assert metric("spoor_retention_default_rows", store="events") == 1
    write(engine, [ev("spring", datetime(2026, 4, 15, tzinfo=UTC))])  # redelivered after its move
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events WHERE event_id = 'spring'")).scalar_one() == 1


def test_many_rows_in_the_default_partition_go_range_by_range(database, monkeypatch):
    engine, settings = database
    monkeypatch.setattr(retention, "DEFAULT_BLOCKS", 4)  # many page ranges for a few thousand rows
    with engine.begin() as conn:
        conn.execute(text("""INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source)
            SELECT 'r' || i, 'u' || (i % 7), 'page', 'Page', TIMESTAMPTZ '2011-01-01Z' + i * interval '1 minute',
                   now(), 'replay' FROM generate_series(1, 4000) i"""))
        conn.execute(text("INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source) "
                          "VALUES ('recent', 'u1', 'page', 'Page', :at, :at, 'web')"), {"at": NOW - timedelta(days=3)})
        pages = conn.execute(text("SELECT pg_relation_size('events_default') / 8192")).scalar_one()
    assert pages > 3 * 4
    report = run_retention(engine, settings, now=NOW)[0]
    assert (report.rows_deleted, report.rows_moved) == (4000, 1)  # 'recent' moved to November's partition
    with engine.connect() as conn:
        assert conn.execute(text("SELECT event_id, tableoid::regclass::text FROM events")).all() == [
            ("recent", "events_p202611")]


def test_dead_letters_keep_one_row_per_id_and_no_future_time(database):
    engine, _settings = database
    writer = StreamWriter(engine)
    row = {"id": "dlq/0/7", "processor": "collector", "field": "x", "reason": "bad", "source": "web",
           "payload": {"userId": "u1"}, "received_at": NOW - timedelta(days=2), "schema_version": 2,
           "failure_type": "schema_violation", "messages": [], "request": None, "replay_of": None}
    writer.write_dead_letters([row])
    writer.write_dead_letters([row | {"received_at": NOW - timedelta(days=1)}])  # same bad row, another time
    writer.write_dead_letters([row | {"id": "dlq/0/8", "received_at": datetime(2099, 1, 1, tzinfo=UTC)}])
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, received_at FROM dead_letters")).all())
    assert rows["dlq/0/7"] == NOW - timedelta(days=2)
    assert rows["dlq/0/8"] <= datetime.now(UTC)


def test_a_busy_table_is_left_for_the_next_run(database):
    engine, settings = database
    settings = settings.model_copy(update={"retention_events_days": 60})
    run_retention(engine, settings, now=NOW - timedelta(days=200))
    write(engine, [ev("old", NOW - timedelta(days=200))])
    reader = engine.connect()
    reader.begin()
    reader.execute(text("SELECT count(*) FROM events_p202605"))  # a long reader holds the partition
    failures = metric("spoor_retention_failures_total", store="events")
    try:
        reports = {r.store: r for r in run_retention(engine, settings, now=NOW)}
    finally:
        reader.rollback()
        reader.close()
    assert "lock timeout" in reports["events"].error and not reports["events"].dropped
    assert reports["dead_letters"].error is None  # the other stores went on
    assert metric("spoor_retention_failures_total", store="events") == failures + 1
    assert "events_p202605" in run_retention(engine, settings, now=NOW)[0].dropped


def test_two_runs_never_overlap(database):
    engine, settings = database
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": retention.RUN_LOCK})
        result = []
        thread = threading.Thread(target=lambda: result.append(run_retention(engine, settings, now=NOW)))
        thread.start()
        thread.join(30)
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": retention.RUN_LOCK})
    assert result == [None]


def test_the_runners_turn_runs_the_job_once_per_interval(database):
    engine, settings = database
    turn = retention.RetentionTurn(engine, settings)
    first = turn()
    assert [r.store for r in first] == STORES
    assert all(r.error is None for r in first)
    assert turn() is None  # SPOOR_RETENTION_INTERVAL_S (an hour) has not passed


def test_the_cli_runs_the_job_and_shows_each_store(database):
    engine, settings = database
    env = {**os.environ, "SPOOR_DATABASE_URL": settings.database_url}

    def spoor(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spoor.cli", "retention", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    ran = spoor("run")
    assert ran.returncode == 0, ran.stderr
    assert [r["store"] for r in json.loads(ran.stdout)] == STORES
    status = {s["store"]: s for s in json.loads(spoor("status").stdout)}
    assert status["events"]["partitions"] >= 5 and status["events"]["retention_days"] == 395
    assert status["dead_letters"]["unit"] == "day" and status["campaign_deliveries"]["retention_days"] == 730
    assert "with" not in status["sessions"] and status["sessions"]["margin_s"] == 12 * 3600  # journeys in its rows
    assert status["campaign_deliveries"]["partitions"] >= 5 and status["order_attribution"]["retention_days"] == 395
    refused = spoor("run", SPOOR_RETENTION_DEAD_LETTERS_DAYS="-1")
    assert refused.returncode != 0 and "retention_dead_letters_days" in refused.stderr
    with engine.connect() as conn, conn.begin():  # another run holds the lock: this one does nothing
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": retention.RUN_LOCK})
        busy = spoor("run")
    assert busy.returncode == 1 and "another run" in busy.stderr


def test_partitions_are_not_user_tables_of_their_own(database):
    engine, _settings = database
    with engine.connect() as conn:
        tables = conn.execute(TABLES_WITH_USER_KEY).scalars().all()
    assert "events" in tables and not [t for t in tables if t.startswith("events_")]


def migrated_to_before(url: str, revision: str) -> Config:
    """Upgrade the database at ``url`` to every head not built on ``revision`` and to its own down revisions: the
    schema ``revision`` finds when it runs. Returns the alembic config, for the upgrade and downgrade."""
    config = alembic_config(url)
    script = ScriptDirectory.from_config(config)
    down = script.get_revision(revision).down_revision  # alembic gives a one-revision tuple as a string
    heads = [h for h in script.get_heads() if revision not in {r.revision for r in script.iterate_revisions(h, "base")}]
    for head in heads + ([down] if isinstance(down, str) else list(down)):
        command.upgrade(config, head)
    return config


def test_the_migration_converts_tables_that_hold_rows_and_their_views(base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_migration_{uuid.uuid4().hex[:10]}")
    engine = create_engine(db.url)
    try:
        config = migrated_to_before(db.url, "0027")
        with engine.begin() as conn:
            conn.execute(text("""INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source)
                SELECT 'e' || i, 'u' || (i % 40), 'page', 'x', TIMESTAMPTZ '2026-12-03 12:00Z' - i * interval '1 hour',
                       now(), 'web' FROM generate_series(1, 12000) i"""))
            conn.execute(text("""INSERT INTO dead_letters (id, processor, reason, payload, received_at)
                SELECT 'd' || i, 'collector', 'bad', '{}', now() - i * interval '1 hour' FROM generate_series(1, 500) i"""))
            conn.execute(text("CREATE VIEW events_per_user AS SELECT user_key, count(*) AS n FROM events GROUP BY 1"))
            conn.execute(text("CREATE MATERIALIZED VIEW top_users AS SELECT user_key, n FROM events_per_user"))
            conn.execute(text("CREATE UNIQUE INDEX top_users_key ON top_users (user_key)"))
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*), count(DISTINCT event_id) FROM events")).one() == (12000, 12000)
            assert conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one() == 500
            assert conn.execute(text("SELECT count(*) FROM events_default")).scalar_one() == 0
            assert conn.execute(text("SELECT sum(n) FROM events_per_user")).scalar_one() == 12000
            assert conn.execute(text("SELECT sum(n) FROM top_users")).scalar_one() == 12000
            assert conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'top_users_key'")).scalar_one()
            assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'events'")).scalar_one() == "p"
            this_month = f"events_p{datetime.now(UTC):%Y%m}"  # and the next 3: made ahead
            assert {"events_p202511", "events_p202611", "events_p202612", this_month} <= set(partitions(conn, "events"))
        write(engine, [ev("e1", datetime(2026, 12, 3, 11, 0, tzinfo=UTC))])  # stored before the migration
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM events WHERE event_id = 'e1'")).scalar_one() == 1
        command.downgrade(config, "0018")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'events'")).scalar_one() == "r"
            assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 12000
            assert conn.execute(text("SELECT sum(n) FROM top_users")).scalar_one() == 12000
    finally:
        engine.dispose()
        db.drop()
