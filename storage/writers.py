"""Batch writers. Every write is idempotent, so at-least-once redelivery is harmless.

``StreamWriter.write_batch`` puts a batch's events and the resulting profile
snapshots in one transaction: either both are visible or neither is. A profile
snapshot never replaces a newer one (its event count is its version).

Rows go in with COPY into per-connection temporary tables, then one
INSERT ... SELECT ... ON CONFLICT per table: per-row parameter binding cost
more than the rest of the worker together.
"""

import io
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Engine, event
from sqlalchemy.dialects.postgresql import insert

from spoor.events import Event
from storage.models import DeadLetter, UserProfile
from storage.models import Event as EventRow

PROFILE_COLUMNS = [c.name for c in UserProfile.__table__.columns if c.name != "updated_at"]
EVENT_COLUMNS = [c.name for c in EventRow.__table__.columns if c.name != "persisted_at"]

STAGING_TABLES = (
    "CREATE TEMP TABLE spoor_events_in (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE spoor_profiles_in (LIKE user_profiles INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
)
MERGE_EVENTS = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM spoor_events_in ON CONFLICT (event_id) DO NOTHING"
)
_profile_updates = ", ".join(f"{c} = excluded.{c}" for c in PROFILE_COLUMNS if c != "user_key")
MERGE_PROFILES = (
    f"INSERT INTO user_profiles ({', '.join(PROFILE_COLUMNS)}) "
    f"SELECT {', '.join(PROFILE_COLUMNS)} FROM spoor_profiles_in ORDER BY user_key "
    f"ON CONFLICT (user_key) DO UPDATE SET {_profile_updates}, updated_at = now() "
    "WHERE user_profiles.events <= excluded.events"
)
INSERT_DEAD_LETTERS = insert(DeadLetter.__table__).on_conflict_do_nothing(index_elements=["id"])


def copy_text(rows: Iterable[Sequence]) -> io.StringIO:
    """Rows in PostgreSQL's COPY text format."""
    out = io.StringIO()
    for row in rows:
        out.write("\t".join(_cell(value) for value in row))
        out.write("\n")
    out.seek(0)
    return out


def _cell(value) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def event_values(event: Event) -> tuple:
    return tuple(event.kind.value if name == "kind" else getattr(event, name) for name in EVENT_COLUMNS)


class StreamWriter:
    """Writes what the worker derived from one batch. Blocking: call it from a thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        event.listen(engine, "connect", _create_staging_tables)

    def write_batch(self, profiles: Sequence[dict], events: Iterable[Event]) -> None:
        event_rows = copy_text(event_values(e) for e in events)
        profile_rows = copy_text(tuple(p[c] for c in PROFILE_COLUMNS) for p in profiles)
        with self.engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.copy_expert(f"COPY spoor_events_in ({', '.join(EVENT_COLUMNS)}) FROM STDIN", event_rows)
            cursor.execute(MERGE_EVENTS)
            cursor.copy_expert(f"COPY spoor_profiles_in ({', '.join(PROFILE_COLUMNS)}) FROM STDIN", profile_rows)
            cursor.execute(MERGE_PROFILES)
            cursor.close()

    def write_dead_letters(self, rows: Sequence[dict]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(INSERT_DEAD_LETTERS, list(rows))


def _create_staging_tables(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    for statement in STAGING_TABLES:
        cursor.execute(statement)
    cursor.close()
    dbapi_connection.commit()
