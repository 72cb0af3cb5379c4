"""Batch writers. Every write is idempotent, so at-least-once redelivery is harmless.

``StreamWriter.write_batch`` puts a batch's events and the resulting profile
snapshots in one transaction: either both are visible or neither is. A profile
snapshot never replaces a newer one (its event count is its version).

A batch's events reach ``events`` by COPY (text format): the ids already stored near each event's time are
looked up first (one statement), the rest are copied, the first copy of an id in the batch only. The COPY
costs PostgreSQL about half of the JSON merge, the lookup a quarter more (bench/worker_writes.py: 23.7 ->
13.5 + 6.3 us per event); building COPY's text costs the worker ~4 us per event. Should another transaction
insert one of those events meanwhile (a worker that lost its partitions still writing), the COPY fails on the
key, is rolled back to its savepoint, and the batch's events go through the merge (``MERGE_EVENTS``) instead.
Every other table's rows travel as one JSON document per table, expanded by PostgreSQL
(``json_populate_recordset``) and merged with one INSERT ... ON CONFLICT: per-row parameter binding in
Python cost more than the rest of the worker. ``json``, not ``jsonb``: the text is parsed once. The
statements are prepared once per connection (storage/prepared.py).

Identities (storage/identities.py, docs/identity.md): a batch that joins ids to users records its links
and moves each merged id's rows to its user in the same transaction, before the merged user's profile,
activity and sessions are upserted: the user's merged rows and the id's rows never both show.
"""

import io
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from operator import attrgetter

import orjson
import psycopg2.errors
from sqlalchemy import Engine, bindparam, exists, select
from sqlalchemy.dialects.postgresql import insert

from spoor.events import Event, encode_events, encode_product_lines
from spoor.storage.analytics_writer import changed, write_analytics
from spoor.storage.copy_format import ESCAPES, NULL
from spoor.storage.identities import move_rows, record_links, user_key_tables
from spoor.storage.interests import write_interests
from spoor.storage.prepared import execute
from spoor.storage.tables import DeadLetter, UserProfile
from spoor.storage.tables import Event as EventRow

PROFILE_COLUMNS = [c.name for c in UserProfile.__table__.columns if c.name != "updated_at"]
EVENT_COLUMNS = [c.name for c in EventRow.__table__.columns if c.name != "persisted_at"]

# ``events`` is partitioned by month of event_time (migration 0027, storage/retention.py); its key is
# (event_id, event_time). A redelivered event carries the time the collector gave it, so it meets its stored
# copy in the same partition (ON CONFLICT). A client's retry has the same id but a clock-corrected time that
# may differ by the retry's transit time: an id already stored within DEDUPE_SPAN of the event's time is
# refused too (one index probe, in one or two partitions), and so is a second copy of an id in the batch.
DEDUPE_SPAN = "1 day"
MERGE_EVENTS = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"SELECT DISTINCT ON (r.event_id) {', '.join('r.' + c for c in EVENT_COLUMNS)} "
    f"FROM json_populate_recordset(NULL::events, %s::json) WITH ORDINALITY AS r "
    f"WHERE NOT EXISTS (SELECT FROM events e WHERE e.event_id = r.event_id "
    f"AND e.event_time > r.event_time - interval '{DEDUPE_SPAN}' AND e.event_time < r.event_time + interval '{DEDUPE_SPAN}') "
    "ORDER BY r.event_id, r.ordinality "
    "ON CONFLICT (event_id, event_time) DO NOTHING RETURNING event_id"
)
# The batch's events already stored (by the rule above), as their indexes in the batch.
STORED_EVENTS = (
    "SELECT r.n FROM json_to_recordset(%s::json) AS r(n int, i text, t timestamptz) "
    "WHERE EXISTS (SELECT FROM events e WHERE e.event_id = r.i "
    f"AND e.event_time > r.t - interval '{DEDUPE_SPAN}' AND e.event_time < r.t + interval '{DEDUPE_SPAN}')"
)
COPY_EVENTS = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
_event_values = attrgetter(*EVENT_COLUMNS)
_PRODUCTS, _EVENT_TIME, _RECEIVED_AT = (EVENT_COLUMNS.index(c) for c in ("products", "event_time", "received_at"))
_profile_updates = ", ".join(f"{c} = excluded.{c}" for c in PROFILE_COLUMNS if c != "user_key")
MERGE_PROFILES = (
    f"INSERT INTO user_profiles ({', '.join(PROFILE_COLUMNS)}) "
    f"SELECT {', '.join(PROFILE_COLUMNS)} FROM json_populate_recordset(NULL::user_profiles, %s::json) "
    f"ORDER BY user_key "
    f"ON CONFLICT (user_key) DO UPDATE SET {_profile_updates}, updated_at = now() "
    f"WHERE user_profiles.events <= excluded.events AND {changed('user_profiles', PROFILE_COLUMNS, ('user_key',))}"
)
# ``dead_letters`` is partitioned by day of received_at (migration 0027), its key (id, received_at): an id
# (the bad row's topic/partition/offset) already stored in any partition is refused, whatever its time.
_DEAD = DeadLetter.__table__
DEAD_LETTER_FIELDS = ("id", "processor", "field", "reason", "source", "payload", "received_at", "schema_version",
                      "failure_type", "messages", "request", "replay_of")
INSERT_DEAD_LETTERS = insert(_DEAD).from_select(
    DEAD_LETTER_FIELDS,
    select(*[bindparam(name, type_=_DEAD.c[name].type) for name in DEAD_LETTER_FIELDS]).where(
        ~exists().where(_DEAD.c.id == bindparam("id", type_=_DEAD.c.id.type)))).on_conflict_do_nothing()
# What the worker writes about a user; an erased user's rows go before the batch's rows are merged, with the
# interest profile made from them (refreshed by the segments runner, which never sees an erased user again).
WORKER_TABLES = ("events", "user_profiles", "sessions", "user_activity", "behaviour_triggers",
                 "user_interests", "user_interest_profiles", "user_recommendations")
ERASE_USERS = [f"DELETE FROM {table} WHERE user_key = ANY(%s)" for table in WORKER_TABLES]


def _decimal_as_text(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _copy_field(value) -> str:
    """A value that is not text as COPY's text format reads it; times are written apart (``copy_text``)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)  # int, Decimal


def _product_lines(event: Event) -> str:
    """The event's product lines as the JSON merge stored them: as the events topic's encoding has them."""
    return encode_product_lines(event.products).decode()


def copy_text(events: Sequence[Event]) -> str:
    """The events as COPY's text format, one line each, columns ``EVENT_COLUMNS``. A line is escaped only
    when it needs it: when its tabs, newlines and backslashes are more than its columns and NULLs make.
    Event and receipt times are written by orjson for the whole batch (datetime.isoformat: 1.6 us each)."""
    times = orjson.dumps([t for e in events for t in (e.event_time, e.received_at)]).decode()[2:-2].split('","')
    lines = []
    tabs = len(EVENT_COLUMNS) - 1
    for n, event in enumerate(events):
        values = list(_event_values(event))
        values[_EVENT_TIME], values[_RECEIVED_AT] = times[2 * n], times[2 * n + 1]
        products = values[_PRODUCTS]
        nulls = values.count(None)
        if products is not None:
            values[_PRODUCTS] = _product_lines(event) if products else None
        fields = [NULL if v is None else v if isinstance(v, str) else _copy_field(v) for v in values]
        line = "\t".join(fields)
        if (line.count("\t") != tabs or line.count("\\") != nulls + (products == ())
                or "\n" in line or "\r" in line):
            line = "\t".join([NULL if v is None else f.translate(ESCAPES) for v, f in zip(values, fields)])
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def insert_events(cursor, events: Sequence[Event]) -> set[str]:
    """Adds the batch's events not yet stored; returns their ids (the events new to the table)."""
    stored = orjson.dumps([{"n": n, "i": e.event_id, "t": e.event_time} for n, e in enumerate(events)]).decode()
    execute(cursor, "spoor_stored_events", STORED_EVENTS, stored)
    refused = {row[0] for row in cursor.fetchall()}
    new, seen = [], set()
    for n, event in enumerate(events):
        if n not in refused and event.event_id not in seen:
            seen.add(event.event_id)
            new.append(event)
    if not new:
        return set()
    cursor.execute("SAVEPOINT copy_events")
    try:
        cursor.copy_expert(COPY_EVENTS, io.BytesIO(copy_text(new).encode()), size=1 << 20)
    except psycopg2.errors.UniqueViolation:  # inserted meanwhile by another transaction: merge instead
        cursor.execute("ROLLBACK TO SAVEPOINT copy_events")
        return merge_events(cursor, new)
    cursor.execute("RELEASE SAVEPOINT copy_events")
    return seen


def merge_events(cursor, events: Sequence[Event]) -> set[str]:
    """``insert_events`` as one JSON merge (``MERGE_EVENTS``): COPY's fallback, and what it replaced."""
    cursor.execute(MERGE_EVENTS, (encode_events(events).decode(),))
    return {row[0] for row in cursor.fetchall()}


class StreamWriter:
    """Writes what the worker derived from one batch. Blocking: call it from a thread. ``copy_events=False``
    writes the events with the JSON merge instead of COPY (bench/worker_writes.py compares the two)."""

    def __init__(self, engine: Engine, copy_events: bool = True):
        self.engine = engine
        self.insert_events = insert_events if copy_events else merge_events

    def write_batch(self, profiles: Sequence[dict], events: list[Event], analytics=None,
                    erased_users: Sequence[str] = (), *, merges: Sequence[tuple[str, str]] = (),
                    links: Sequence[dict] = (), interests: dict | None = None) -> None:
        """``analytics``: a batch's sessions, activity rows and triggers (storage/analytics_writer.py).
        ``erased_users``: users whose erasure record the batch held; their earlier rows are deleted.
        ``links``: rows of ``user_identities`` to upsert (``identities.record_links``); ``merges``:
        (from_key, into_key) whose rows move to ``into_key`` (``identities.move_rows``), after the
        batch's events and before the profiles and analytics, which hold ``into_key``'s merged rows.
        ``interests``: ``stream_processors.interests.interest_batch`` of ``events``; only the events new to
        the ``events`` table add to interests and affinities (storage/interests.py)."""
        profiles_json = orjson.dumps(profiles, default=_decimal_as_text).decode()
        with self.engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            for statement in ERASE_USERS if erased_users else ():
                cursor.execute(statement, (list(erased_users),))
            if links:
                record_links(conn, links)
            new_event_ids = self.insert_events(cursor, events) if events else set()
            if interests is not None and new_event_ids:
                write_interests(cursor, interests, new_event_ids)
            if merges:
                tables = user_key_tables(conn)
                for from_key, into_key in dict.fromkeys(merges):  # in order: a -> b then b -> c ends in c
                    move_rows(conn, from_key, into_key, tables=tables)
            execute(cursor, "spoor_merge_profiles", MERGE_PROFILES, profiles_json)
            if analytics is not None:
                write_analytics(cursor, analytics, _decimal_as_text)
            cursor.close()

    def write_dead_letters(self, rows: Sequence[dict]) -> None:
        """A bad row cannot have been received after it is stored: a later received_at (a hostile record on
        the topic) is stored as now, not kept out of retention's reach in the default partition."""
        if rows:
            now = datetime.now(timezone.utc)
            rows = [{name: row.get(name) for name in DEAD_LETTER_FIELDS} | {"received_at": min(row["received_at"], now)}
                    for row in rows]
            with self.engine.begin() as conn:
                conn.execute(INSERT_DEAD_LETTERS, rows)
