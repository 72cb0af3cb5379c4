"""Writes a batch's behaviour analytics inside the stream writer's transaction. Idempotent.

Same pattern as ``writers.py``: one JSON document per table, expanded by PostgreSQL. A session row
never replaces one with more events, an activity row never replaces a later ``as_of``, a row equal to
the stored one is not updated (``changed``), and a trigger is inserted once (its id is its episode).
Rows are merged in key order: the campaigns runner inserts the same triggers at the same time
(campaigns/trigger_intake.py), in code-point order (COLLATE "C" here): one lock order, so no deadlock.
"""

import orjson

from spoor.storage.analytics_tables import Session
from spoor.storage.journey_tables import SessionJourney
from spoor.storage.prepared import execute
from spoor.storage.tables import BehaviourTrigger, UserActivity

SESSION_COLUMNS = [c.name for c in Session.__table__.columns if c.name not in ("updated_at", "traffic_source")]
ACTIVITY_COLUMNS = [c.name for c in UserActivity.__table__.columns if c.name != "updated_at"]
TRIGGER_COLUMNS = [c.name for c in BehaviourTrigger.__table__.columns if c.name != "recorded_at"]
JOURNEY_COLUMNS = [c.name for c in SessionJourney.__table__.columns if c.name != "updated_at"]


def changed(table: str, columns: list[str], keys: tuple[str, ...]) -> str:
    """An upsert's condition that the incoming row differs from the stored one: a row written again unchanged
    (a redelivered batch, a merged user's sessions written whole) then makes no new row version, no WAL, and
    keeps its ``updated_at`` (nothing changed for the segments runner's changed-users scan to find)."""
    values = [c for c in columns if c not in keys]
    return (f"({', '.join(f'{table}.{c}' for c in values)}) IS DISTINCT FROM "
            f"({', '.join(f'excluded.{c}' for c in values)})")


def _merge(table: str, columns: list[str], keys: tuple[str, ...], version_rule: str, rows: str = "%s::json") -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"SELECT {', '.join(columns)} FROM json_populate_recordset(NULL::{table}, {rows}) "
            f"ORDER BY {', '.join(keys)} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}, updated_at = now() "
            f"WHERE {version_rule} AND {changed(table, columns, keys)}")


# (user_key, session_id, opened_at): a partitioned table's keys hold its partition key (migration 0030)
MERGE_SESSIONS = _merge("sessions", SESSION_COLUMNS, ("user_key", "session_id", "opened_at"),
                        "sessions.events <= excluded.events")
MERGE_ACTIVITY = _merge("user_activity", ACTIVITY_COLUMNS, ("user_key",), "user_activity.as_of <= excluded.as_of")
# A session row carries its journey row (analytics_tracker.session_row), sent as a document of its own:
# taking it out of the sessions' document in PostgreSQL (json_array_elements, json_agg) cost more than its merge.
MERGE_JOURNEYS = _merge("session_journeys", JOURNEY_COLUMNS, ("user_key", "session_id", "opened_at"),
                        "session_journeys.events <= excluded.events")
JOURNEYS_FROM_SESSIONS = MERGE_JOURNEYS.replace(
    "%s::json", "(SELECT json_agg(s -> 'journey') FROM json_array_elements(%s::json) s)")
DELETE_RETIRED = ("DELETE FROM {table} s USING json_to_recordset(%s::json) AS r(user_key text, session_id text) "
                  "WHERE s.user_key = r.user_key AND s.session_id = r.session_id")
DELETE_RETIRED_SESSIONS = DELETE_RETIRED.format(table="sessions")
DELETE_RETIRED_JOURNEYS = DELETE_RETIRED.format(table="session_journeys")
INSERT_TRIGGERS = (
    f"INSERT INTO behaviour_triggers ({', '.join(TRIGGER_COLUMNS)}) "
    f"SELECT {', '.join(TRIGGER_COLUMNS)} FROM json_populate_recordset(NULL::behaviour_triggers, %s::json) "
    "ORDER BY trigger_id COLLATE \"C\" ON CONFLICT (trigger_id) DO NOTHING")


def write_analytics(cursor, out, default, journeys=MERGE_JOURNEYS) -> None:
    """Run the batch's statements on an open cursor (inside the caller's transaction). ``journeys``: the
    journeys' statement; ``JOURNEYS_FROM_SESSIONS``, what it replaced, is kept for bench/worker_writes.py."""
    def dump(rows) -> str:
        return orjson.dumps(rows, default=default).decode()

    if out.retired_sessions:
        retired = dump(out.retired_sessions)
        execute(cursor, "spoor_delete_retired_sessions", DELETE_RETIRED_SESSIONS, retired)
        execute(cursor, "spoor_delete_retired_journeys", DELETE_RETIRED_JOURNEYS, retired)
    if out.sessions:
        sessions = dump(out.sessions)
        execute(cursor, "spoor_merge_sessions", MERGE_SESSIONS, sessions)
        if journeys is JOURNEYS_FROM_SESSIONS:
            cursor.execute(journeys, (sessions,))
        else:
            execute(cursor, "spoor_merge_journeys", journeys, dump([session["journey"] for session in out.sessions]))
    if out.activity:
        execute(cursor, "spoor_merge_activity", MERGE_ACTIVITY, dump(out.activity))
    if out.triggers:
        execute(cursor, "spoor_insert_triggers", INSERT_TRIGGERS, dump(out.triggers))
