"""The events' COPY (storage/writers.py) on the real PostgreSQL: the same rows as the JSON merge it replaced,
whatever the text holds; a redelivered batch adds nothing; a second copy of an id, or a client's retry with a
moved time, is refused; an event another transaction inserts meanwhile makes the batch merge instead; and the
prepared statements (storage/prepared.py) outlive a batch that failed on their connection."""

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2.errors
import pytest
from sqlalchemy import create_engine, text

from spoor.events import Event, EventKind, ProductLine, encode_events
from spoor.storage import writers
from spoor.storage.writers import StreamWriter, insert_events

pytestmark = pytest.mark.integration
AT = datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=timezone.utc)
AWKWARD = ("tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\\\N", "", "None", "naïve ☃ \"quoted\"")


def event(tag: str, n: int, **fields) -> Event:
    fields = {"kind": EventKind.PAGE_VIEW, "name": "Home", "event_time": AT + timedelta(seconds=n)} | fields
    return Event(event_id=f"{tag}-{n}", user_key=f"user-{tag}", received_at=AT + timedelta(seconds=n, hours=1),
                 source="test", **fields)


def awkward_events(tag: str) -> list[Event]:
    events = [event(tag, n, name=s, category=s, browser=s, anonymized_ip=s[:45]) for n, s in enumerate(AWKWARD)]
    return events + [
        event(tag, 20, kind=EventKind.PURCHASE, name="Order Completed", order_id="o\t1", revenue=Decimal("12.5000"),
              currency="EUR", is_bot=False, products=(
                  ProductLine(product_id="p\\1", category="a\tb \"c\"", price=Decimal("2.50"), quantity=3),
                  ProductLine(product_id="p2"))),
        event(tag, 21, kind=EventKind.PRODUCT_VIEW, product_id="p3", price=Decimal("1E+2"), quantity=0,
              is_bot=True, browser="Firefox", browser_version="120.0", os="Linux", device="Other"),
    ]


def stored(engine, tag: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(writers.EVENT_COLUMNS)} FROM events WHERE event_id LIKE :t "
                                 "ORDER BY event_id"), {"t": f"{tag}-%"}).mappings().all()
    return [dict(row) for row in rows]


def test_copied_rows_are_the_merged_rows(engine):
    copied, merged = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    StreamWriter(engine).write_batch([], awkward_events(copied))
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(writers.MERGE_EVENTS, (encode_events(awkward_events(merged)).decode(),))
    rows = stored(engine, copied)
    assert len(rows) == len(AWKWARD) + 2
    assert [{**r, "event_id": r["event_id"].split("-", 1)[1], "user_key": None} for r in rows] == [
        {**r, "event_id": r["event_id"].split("-", 1)[1], "user_key": None} for r in stored(engine, merged)]
    names = {r["event_id"]: r["name"] for r in rows}
    assert [names[f"{copied}-{n}"] for n in range(len(AWKWARD))] == list(AWKWARD)


def test_a_batch_written_twice_is_written_once(engine):
    tag = uuid.uuid4().hex[:8]
    events = awkward_events(tag)
    StreamWriter(engine).write_batch([], events)
    first = stored(engine, tag)
    StreamWriter(engine).write_batch([], events)
    assert stored(engine, tag) == first
    with engine.begin() as conn:
        assert insert_events(conn.connection.dbapi_connection.cursor(), events) == set()


def test_a_second_copy_or_a_moved_retry_is_refused(engine):
    tag = uuid.uuid4().hex[:8]
    first = event(tag, 1, name="first")
    StreamWriter(engine).write_batch([], [first, event(tag, 1, name="second copy in the batch"),
                                         event(tag, 2, name="new")])
    retry = event(tag, 1, name="retried", event_time=first.event_time + timedelta(milliseconds=40))
    later = event(tag, 3, name="a day on", event_time=first.event_time + timedelta(days=2))
    with engine.begin() as conn:
        assert insert_events(conn.connection.dbapi_connection.cursor(), [retry, later]) == {f"{tag}-3"}
    assert [(r["event_id"], r["name"]) for r in stored(engine, tag)] == [
        (f"{tag}-1", "first"), (f"{tag}-2", "new"), (f"{tag}-3", "a day on")]


def test_an_event_inserted_meanwhile_makes_the_batch_merge(engine):
    """Another transaction holds the same event, uncommitted: the probe cannot see it, the COPY waits on its
    key, and fails once it commits; the batch goes through the merge, which adds the rest only."""
    tag = uuid.uuid4().hex[:8]
    events = [event(tag, n) for n in range(3)]
    other = engine.connect()
    other_tx = other.begin()
    other.connection.dbapi_connection.cursor().execute(writers.MERGE_EVENTS, (encode_events(events[1:2]).decode(),))
    new_ids, failures = [], []

    def write() -> None:
        try:
            with engine.begin() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
                new_ids.append(insert_events(cursor, events))
        except Exception as err:  # reported by the assertion below
            failures.append(err)

    pids: list[int] = []
    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while time.monotonic() < deadline and not conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p) AND wait_event_type = 'Lock'"),
                {"p": pids}).scalar_one():
            time.sleep(0.02)
    other_tx.commit()
    other.close()
    writer.join(30)
    assert not failures and new_ids == [{f"{tag}-0", f"{tag}-2"}]
    assert [r["event_id"] for r in stored(engine, tag)] == [f"{tag}-0", f"{tag}-1", f"{tag}-2"]


def test_a_failed_batch_leaves_its_connection_able_to_write(test_settings):
    """The first batch on a connection prepares the statements, then fails (a profile PostgreSQL refuses) and is
    rolled back: the next batch on the same connection still finds them."""
    engine = create_engine(test_settings.database_url, pool_size=1, max_overflow=0)
    try:
        tag = uuid.uuid4().hex[:8]
        writer = StreamWriter(engine)
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
            writer.write_batch([{"user_key": f"user-{tag}", "events": "not a number"}], [event(tag, 1)])
        assert stored(engine, tag) == []
        writer.write_batch([], [event(tag, 1), event(tag, 2)])
        writer.write_batch([], [event(tag, 2), event(tag, 3)])
        assert [r["event_id"] for r in stored(engine, tag)] == [f"{tag}-1", f"{tag}-2", f"{tag}-3"]
    finally:
        engine.dispose()
