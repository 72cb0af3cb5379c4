"""Reads and writes of ``user_consent`` per purpose (docs/privacy.md#consent).

A purpose is withdrawn for a person when ``opted_out`` is set (every purpose), or its recorded column
(`spoor users consent`, the API) is false, or its ``page_`` column (the latest statement on the person's
events, written by the worker) is false: a withdrawal anywhere wins. ``withdrawn_sql`` is that rule for a
query; campaigns and recommendations read it, the worker keeps its own copy of the rows that withdraw
something (stream_processors/consent_gate.py).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import Engine, or_, text

from spoor.consent import DENIED, PURPOSES
from spoor.storage.segment_tables import UserConsent

CONSENT = UserConsent.__table__
PAGE = {purpose: f"page_{purpose}" for purpose in PURPOSES}


def withdrawn_sql(purpose: str, alias: str = "user_consent") -> str:
    """SQL that is true when the row ``alias`` withdraws ``purpose`` (a constant purpose, never user input)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    return f"({alias}.opted_out OR {alias}.{purpose} IS false OR {alias}.page_{purpose} IS false)"


def withdrawn(purpose: str):
    """``withdrawn_sql`` as a SQLAlchemy expression on ``user_consent``."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    return or_(CONSENT.c.opted_out, CONSENT.c[purpose].is_(False), CONSENT.c[PAGE[purpose]].is_(False))


@dataclass(frozen=True)
class StoredConsent:
    """One row, as the worker needs it: what the recorded statement withdraws (``opted_out`` withdraws
    all), and what the page's latest statement withdraws (None: no page statement recorded)."""

    user_key: str
    recorded: frozenset[str]
    page: frozenset[str] | None

    @property
    def withdraws_something(self) -> bool:
        return bool(self.recorded or self.page)


_COLUMNS = "user_key, opted_out, " + ", ".join(PURPOSES) + ", " + ", ".join(PAGE.values()) + ", page_stated_at"
_ANY_WITHDRAWN = " OR ".join(withdrawn_sql(p) for p in PURPOSES)
READ_WITHDRAWN = text(f"SELECT {_COLUMNS} FROM user_consent WHERE {_ANY_WITHDRAWN} LIMIT :limit")
READ_CHANGED = text(f"SELECT {_COLUMNS} FROM user_consent WHERE updated_at >= :since")
READ_USERS = text(f"SELECT {_COLUMNS} FROM user_consent WHERE user_key = ANY(:keys)")
DATABASE_NOW = text("SELECT now()")


def _stored(row) -> StoredConsent:
    m = row._mapping
    recorded = frozenset(PURPOSES) if m["opted_out"] else frozenset(p for p in PURPOSES if m[p] is False)
    page = None if m["page_stated_at"] is None else frozenset(p for p in PURPOSES if m[PAGE[p]] is False)
    return StoredConsent(m["user_key"], recorded, page)


def read_withdrawn(engine: Engine, limit: int) -> tuple[list[StoredConsent], datetime]:
    """Up to ``limit`` rows that withdraw a purpose, and the database's time of the read (for read_changed)."""
    with engine.connect() as conn:
        now = conn.execute(DATABASE_NOW).scalar_one()
        rows = [_stored(r) for r in conn.execute(READ_WITHDRAWN, {"limit": limit})]
    return rows, now


def read_changed(engine: Engine, since: datetime) -> tuple[list[StoredConsent], datetime]:
    """Every row updated since ``since`` (withdrawing or not), and the database's time of the read."""
    with engine.connect() as conn:
        now = conn.execute(DATABASE_NOW).scalar_one()
        rows = [_stored(r) for r in conn.execute(READ_CHANGED, {"since": since})]
    return rows, now


def read_users(engine: Engine, keys: Sequence[str]) -> list[StoredConsent]:
    with engine.connect() as conn:
        return [_stored(r) for r in conn.execute(READ_USERS, {"keys": list(keys)})]


# The latest page statement of each user. One worker writes a user's (their partition's), in the order of
# the user's events; a redelivered batch writes the same values again.
RECORD_PAGE = text(f"""
    INSERT INTO user_consent AS c (user_key, {', '.join(PAGE.values())}, page_stated_at, updated_at)
    SELECT s.user_key, {', '.join(f's.{p}' for p in PURPOSES)}, s.stated_at, now()
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS s(user_key text, {', '.join(f'{p} boolean' for p in PURPOSES)}, stated_at timestamptz)
    ON CONFLICT (user_key) DO UPDATE
       SET {', '.join(f'{col} = excluded.{col}' for col in PAGE.values())},
           page_stated_at = excluded.page_stated_at, updated_at = now()
""")


def record_page_statements(engine: Engine, statements: Iterable[tuple[str, str, datetime]]) -> None:
    """Upsert (user_key, statement (``Event.consent``), when it was made) as the users' latest page statements."""
    rows = [{"user_key": key, **{p: p not in DENIED[said] for p in PURPOSES}, "stated_at": at.isoformat()}
            for key, said, at in sorted(statements, key=lambda s: s[0])]  # one lock order for every writer
    if rows:
        with engine.begin() as conn:
            conn.execute(RECORD_PAGE, {"rows": orjson.dumps(rows).decode()})
