"""Writes a batch's behaviour analytics inside the stream writer's transaction. Idempotent.

Same pattern as ``writers.py``: one JSON document per table, expanded by PostgreSQL. A session row
never replaces one with more events, an activity row never replaces a later ``as_of``, a row equal to
the stored one is not updated (``changed``), and a trigger is inserted once (its id is its episode).
Rows are merged in key order: the campaigns runner inserts the same triggers at the same time
(campaigns/trigger_intake.py), in code-point order (COLLATE "C" here): one lock order, so no deadlock.
"""

import orjson

from spoor.storage.analytics_tables import Session
from spoor.storage.prepared import execute
from spoor.storage.tables import BehaviourTrigger, UserActivity

SESSION_COLUMNS = [c.name for c in Session.__table__.columns if c.name not in ("updated_at", "traffic_source")]
ACTIVITY_COLUMNS = [c.name for c in UserActivity.__table__.columns if c.name != "updated_at"]
TRIGGER_COLUMNS = [c.name for c in BehaviourTrigger.__table__.columns if c.name != "recorded_at"]


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
DELETE_RETIRED = ("DELETE FROM {table} s USING json_to_recordset(%s::json) AS r(user_key text, session_id text) "
                  "WHERE s.user_key = r.user_key AND s.session_id = r.session_id")
DELETE_RETIRED_SESSIONS = DELETE_RETIRED.format(table="sessions")
INSERT_TRIGGERS = (
    f"INSERT INTO behaviour_triggers ({', '.join(TRIGGER_COLUMNS)}) "
    f"SELECT {', '.join(TRIGGER_COLUMNS)} FROM json_populate_recordset(NULL::behaviour_triggers, %s::json) "
    "ORDER BY trigger_id COLLATE \"C\" ON CONFLICT (trigger_id) DO NOTHING")


def write_analytics(cursor, out, default) -> None:
    """Run the batch's statements on an open cursor (inside the caller's transaction). A session's row holds
    its journey (migration 0033): one upsert writes both."""
    def dump(rows) -> str:
        return orjson.dumps(rows, default=default).decode()

    if out.retired_sessions:
        retired = dump(out.retired_sessions)
        execute(cursor, "spoor_delete_retired_sessions", DELETE_RETIRED_SESSIONS, retired)
    if out.sessions:
        execute(cursor, "spoor_merge_sessions", MERGE_SESSIONS, dump(out.sessions))
    if out.activity:
        execute(cursor, "spoor_merge_activity", MERGE_ACTIVITY, dump(out.activity))
    if out.triggers:
        execute(cursor, "spoor_insert_triggers", INSERT_TRIGGERS, dump(out.triggers))
