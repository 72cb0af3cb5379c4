"""Channel attribution in PostgreSQL: the segments runner's pass, and the reports (docs/attribution.md).

The pass rewrites every ``order_attribution`` row of the people changed since its last pass (a profile
written: an event of theirs arrived, late ones and refunds included, or another id was merged into
them), from their orders, refunds and sessions as they are now (``attribution_models.attribute``).
Recomputing a person whole is what makes late sessions and refunds exact: nothing is adjusted by
difference. One transaction per chunk of people; it holds their profiles FOR KEY SHARE first, so a
merge or an erasure (which lock or delete the profile) is either wholly before the chunk (the id's rows
are not written) or wholly after it (it removes what the chunk wrote). A profile a merge or an erasure
holds at that moment is skipped, never waited for (no deadlock with the worker): that transaction
removes the id's rows, and writes the person it merges into, whom the next pass attributes again.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert

from spoor.segments.attribution_models import MODELS, ORDER, REFUND, Conversion, Touch, attribute, channel
from spoor.segments.membership import CURSORS, Changes, Pace, users_changed_since

log = logging.getLogger(__name__)

CHUNK = 500  # people per transaction

LIVE_PEOPLE = text("SELECT user_key FROM user_profiles WHERE user_key = ANY(:keys) "
                   "ORDER BY user_key COLLATE \"C\" FOR KEY SHARE SKIP LOCKED")
CONVERSIONS = text("""
    SELECT user_key, event_id, kind, order_id, event_time, coalesce(revenue, 0) AS amount, currency
      FROM events WHERE user_key = ANY(:keys) AND kind IN ('purchase', 'refund')
""")
SESSIONS = text("SELECT user_key, session_id, started_at, utm_source, utm_medium, referrer "
                "FROM sessions WHERE user_key = ANY(:keys)")
DELETE_ROWS = text("DELETE FROM order_attribution WHERE user_key = ANY(:keys)")
COLUMNS = ("user_key", "conversion_id", "model", "touch", "kind", "order_id", "converted_at", "currency",
           "session_id", "channel", "amount")
INSERT_ROWS = text(f"""
    INSERT INTO order_attribution ({', '.join(COLUMNS)})
    SELECT {', '.join(COLUMNS)} FROM json_populate_recordset(NULL::order_attribution, CAST(:rows AS json))
""")


def _json(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def attribute_people(engine: Engine, keys: Sequence[str], window: timedelta, pace: Pace | None = None) -> int:
    """Rewrite the attribution rows of ``keys`` (people with no profile lose theirs); the rows written."""
    written = 0
    keys = sorted(set(keys))
    for start in range(0, len(keys), CHUNK):
        started = time.monotonic()
        chunk = keys[start:start + CHUNK]
        with engine.begin() as conn:
            live = conn.execute(LIVE_PEOPLE, {"keys": chunk}).scalars().all()
            conversions, sessions = defaultdict(list), defaultdict(list)
            for row in conn.execute(CONVERSIONS, {"keys": live}):
                kind = ORDER if row.kind == "purchase" else REFUND
                conversions[row.user_key].append(Conversion(row.event_id, kind, row.order_id, row.event_time,
                                                            row.amount, row.currency))
            for row in conn.execute(SESSIONS, {"keys": live}):
                sessions[row.user_key].append(Touch(row.session_id, row.started_at,
                                                    channel(row.utm_source, row.utm_medium, row.referrer)))
            rows = [{"user_key": key, **r} for key in live if conversions[key]
                    for r in attribute(conversions[key], sessions[key], window)]
            conn.execute(DELETE_ROWS, {"keys": chunk})
            if rows:
                conn.execute(INSERT_ROWS, {"rows": orjson.dumps(rows, default=_json).decode()})
        written += len(rows)
        if pace is not None:
            pace(time.monotonic() - started)
    return written


def attribution_pass(engine: Engine, window: timedelta, overlap_s: float, cursor: str = "attribution",
                     pace: Pace | None = None, changes: Changes | None = None) -> dict:
    """Attribute again the orders of the people changed since the last pass (its own cursor in
    ``segment_cursors``, read as the membership pass reads its own; ``changes``: found with its scan)."""
    keys, _since, next_since = users_changed_since(engine, cursor, overlap_s, changes)
    rows = attribute_people(engine, keys, window, pace)
    with engine.begin() as conn:
        conn.execute(insert(CURSORS).values(name=cursor, changed_since=next_since)
                     .on_conflict_do_update(index_elements=["name"], set_={"changed_since": next_since}))
    return {"people": len(keys), "rows": rows}


# -- reports -----------------------------------------------------------------------------------------

MAX_REPORT_DAYS = 366
MAX_REPORT_ROWS = 10_000


def _report_query(per_day: bool) -> str:
    day = "(converted_at AT TIME ZONE 'UTC')::date" if per_day else "NULL::date"
    return f"""
    SELECT model, {day} AS day, channel, currency,
           count(DISTINCT conversion_id) FILTER (WHERE kind = 'order') AS orders,
           coalesce(sum(amount) FILTER (WHERE kind = 'order'), 0::numeric(18, 4)) AS revenue,
           coalesce(-sum(amount) FILTER (WHERE kind = 'refund'), 0::numeric(18, 4)) AS refunded,
           sum(amount) AS net_revenue
      FROM order_attribution
     WHERE model = ANY(:models) AND converted_at >= :start AND converted_at < :end
     GROUP BY model, 2, channel, currency
     ORDER BY model, 2, net_revenue DESC, channel COLLATE "C", currency
     LIMIT :limit
    """


def check_period(start: date, end: date, max_days: int = MAX_REPORT_DAYS) -> None:
    if end < start:
        raise ValueError("the end date is before the start date")
    if (end - start).days + 1 > max_days:
        raise ValueError(f"a report covers at most {max_days} days")


def report(engine: Engine, start: date, end: date, models: Sequence[str] = MODELS, per_day: bool = False,
           limit: int = 1000) -> dict:
    """Revenue by model and channel (and UTC day with ``per_day``) of the conversions from ``start`` to
    ``end`` (UTC dates, both included); money as decimal strings. At most ``limit`` rows (``truncated``)."""
    check_period(start, end)
    unknown = set(models) - set(MODELS)
    if unknown or not models:
        raise ValueError(f"unknown attribution model {sorted(unknown)}; one of {', '.join(MODELS)}")
    limit = max(1, min(limit, MAX_REPORT_ROWS))
    params = {"models": list(models), "limit": limit + 1,
              "start": datetime.combine(start, datetime.min.time(), timezone.utc),
              "end": datetime.combine(end + timedelta(days=1), datetime.min.time(), timezone.utc)}
    with engine.connect() as conn:
        found = conn.execute(text(_report_query(per_day)), params).all()
    rows = [{"model": r.model, **({"day": r.day.isoformat()} if per_day else {}), "channel": r.channel,
             "currency": r.currency, "orders": r.orders, "revenue": str(r.revenue), "refunded": str(r.refunded),
             "net_revenue": str(r.net_revenue)} for r in found[:limit]]
    return {"from": start.isoformat(), "to": end.isoformat(), "models": list(models), "rows": rows,
            "truncated": len(found) > limit}
