"""Batch writers. Every write is idempotent, so at-least-once redelivery is harmless.

``StreamWriter.write_batch`` puts a batch's events and the resulting profile
snapshots in one transaction: either both are visible or neither is. A profile
snapshot never replaces a newer one (its event count is its version).
"""

from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, func
from sqlalchemy.dialects.postgresql import insert

from spoor.events import Event
from storage.models import DeadLetter, UserProfile
from storage.models import Event as EventRow

_PROFILE_COLUMNS = [c.name for c in UserProfile.__table__.columns if c.name not in ("user_key", "updated_at")]
_EVENT_COLUMNS = [c.name for c in EventRow.__table__.columns if c.name != "persisted_at"]


def _upsert_profiles():
    stmt = insert(UserProfile.__table__)
    return stmt.on_conflict_do_update(
        index_elements=["user_key"],
        set_={**{name: stmt.excluded[name] for name in _PROFILE_COLUMNS}, "updated_at": func.now()},
        where=UserProfile.__table__.c.events <= stmt.excluded.events,
    )


UPSERT_PROFILES = _upsert_profiles()
INSERT_EVENTS = insert(EventRow.__table__).on_conflict_do_nothing(index_elements=["event_id"])
INSERT_DEAD_LETTERS = insert(DeadLetter.__table__).on_conflict_do_nothing(index_elements=["id"])


def event_row(event: Event) -> dict:
    row = {name: getattr(event, name) for name in _EVENT_COLUMNS}
    row["kind"] = event.kind.value
    return row


class StreamWriter:
    """Writes what the worker derived from one batch. Blocking: call it from a thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def write_batch(self, profiles: Sequence[dict], events: Iterable[Event]) -> None:
        event_rows = [event_row(e) for e in events]
        with self.engine.begin() as conn:
            if event_rows:
                conn.execute(INSERT_EVENTS, event_rows)
            if profiles:
                conn.execute(UPSERT_PROFILES, sorted(profiles, key=lambda p: p["user_key"]))

    def write_dead_letters(self, rows: Sequence[dict]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(INSERT_DEAD_LETTERS, list(rows))
