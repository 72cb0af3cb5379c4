"""What an upserted row costs PostgreSQL (bench/upsert_costs.py): a row the worker writes again unchanged (a
redelivered batch) makes no new row version and keeps its ``updated_at``, a changed one is still updated, and
migration 0032 drops the unread ``sessions_started_at`` from every partition and leaves half of each page of the
upserted tables free (its downgrade makes the index again and sets fillfactor 70 back)."""

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from spoor.storage.migrate import upgrade
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.behaviour import AnalyticsRules
from tests.integration.test_retention import migrated_to_before
from tests.integration.test_retention_partitions import ev, insert_session, nothing
from tests.support.scratch_db import ScratchDatabase

pytestmark = pytest.mark.integration
UTC = timezone.utc
T = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
TABLES = ("user_profiles", "sessions", "user_activity")  # a session's row holds its journey (migration 0033)


@pytest.fixture
def engine(base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_upserts_{uuid.uuid4().hex[:10]}")
    upgrade(db.url)
    engine = create_engine(db.url)
    yield engine
    engine.dispose()
    db.drop()


def profile(events: int) -> dict:
    return {"user_key": "u1", "user_id": None, "first_seen_at": T, "last_seen_at": T + timedelta(minutes=events),
            "events": events, "page_views": events, "product_views": 0, "distinct_products_viewed": 0, "clicks": 0,
            "cart_adds": 0, "cart_removes": 0, "cart_value": Decimal("0"), "checkouts": 0, "orders": 0,
            "revenue": Decimal("12.50"), "first_purchase_at": None, "last_purchase_at": None}


def versions(engine) -> dict[str, list[tuple]]:
    """Each table's rows as (xmin, updated_at, events or as_of): a new row version has a new xmin."""
    with engine.connect() as conn:
        return {table: conn.execute(text(
            f"SELECT xmin::text, updated_at, {'as_of' if table == 'user_activity' else 'events'} FROM {table} "
            "ORDER BY user_key")).all() for table in TABLES}


def test_a_batch_written_again_unchanged_makes_no_new_row_versions(engine):
    tracker = AnalyticsTracker(AnalyticsRules(), 1, nothing)
    first = [ev(1, T), ev(2, T + timedelta(minutes=2))]
    state = tracker.fold("u1", b"{}", None, first, first)
    out = tracker.take_output()
    writer = StreamWriter(engine)
    writer.write_batch([profile(2)], [], out)
    written = versions(engine)
    assert all(len(rows) == 1 for rows in written.values())
    writer.write_batch([profile(2)], [], out)  # redelivered: the same rows again
    assert versions(engine) == written
    with engine.connect() as conn:  # not one update reached a table
        assert conn.execute(text("SELECT sum(n_tup_upd) FROM pg_stat_xact_user_tables")).scalar_one() in (0, None)

    later = [ev(3, T + timedelta(minutes=4))]
    tracker.fold("u1", b"{}", state.split(b"\n", 2)[2], later, later)
    writer.write_batch([profile(3)], [], tracker.take_output())
    changed = versions(engine)
    for table in TABLES:  # a changed row is still written, in place of the old
        assert changed[table][0][0] != written[table][0][0], table
        assert changed[table][0][1] > written[table][0][1], table
    assert changed["sessions"][0][2] == changed["user_profiles"][0][2] == 3


def test_the_migration_drops_the_started_at_index_from_every_partition_and_its_downgrade_makes_it_again(
        base_settings):
    db = ScratchDatabase(base_settings.database_url, f"spoor_migration_{uuid.uuid4().hex[:10]}")
    engine = create_engine(db.url)

    def started_at_indexes(conn) -> int:
        return conn.execute(text("SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'sessions%' "
                                 "AND indexdef LIKE '%(started_at)'")).scalar_one()

    def fillfactors(conn) -> set:
        return set(conn.execute(text(
            "SELECT array_to_string(c.reloptions, ',') FROM pg_class c WHERE c.relname IN ('user_profiles', "
            "'user_activity') OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent IN "
            "(CAST('sessions' AS regclass), CAST('session_journeys' AS regclass)))")).scalars())

    try:
        config = migrated_to_before(db.url, "0032")
        with engine.begin() as conn:
            partitions = conn.execute(text("SELECT count(*) FROM pg_inherits "
                                           "WHERE inhparent = CAST('sessions' AS regclass)")).scalar_one()
            assert started_at_indexes(conn) == partitions + 1  # the partitioned index and each partition's
            assert fillfactors(conn) == {"fillfactor=70"}
            insert_session(conn, "s1", T, journey=False)
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            assert started_at_indexes(conn) == 0
            assert fillfactors(conn) == {"fillfactor=50"}
            assert conn.execute(text("SELECT count(*) FROM sessions")).scalar_one() == 1
        command.downgrade(config, "0030")
        with engine.connect() as conn:
            assert started_at_indexes(conn) == partitions + 1
            assert fillfactors(conn) == {"fillfactor=70"}
            assert conn.execute(text("SELECT session_id FROM sessions WHERE started_at = :t"), {"t": T}).all() == [
                ("s1",)]
        command.upgrade(config, "heads")
    finally:
        engine.dispose()
        db.drop()
