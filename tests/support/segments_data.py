"""Rows for segment and campaign tests, written straight into PostgreSQL (the stream analytics that
fills user_activity and behaviour_triggers is built elsewhere)."""

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert

from spoor.storage.tables import BehaviourTrigger, Event, UserActivity, UserProfile

PROFILE_COUNTS = ("events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts",
                  "orders")


def profile(user_key: str, now: datetime, *, orders: int = 0, revenue: str = "0",
            last_purchase_days: float | None = None, first_purchase_days: float | None = None,
            first_seen_days: float = 100, user_id: str | None = None, **counts) -> dict:
    row = {name: counts.pop(name, 0) for name in PROFILE_COUNTS}
    assert not counts, counts
    row.update(user_key=user_key, user_id=user_id, first_seen_at=now - timedelta(days=first_seen_days),
               last_seen_at=now - timedelta(hours=1), distinct_products_viewed=0, cart_value=Decimal(0),
               orders=orders, revenue=Decimal(revenue),
               last_purchase_at=None if last_purchase_days is None else now - timedelta(days=last_purchase_days),
               first_purchase_at=None if first_purchase_days is None and last_purchase_days is None
               else now - timedelta(days=first_purchase_days or last_purchase_days))
    row["events"] = max(row["events"], 1)
    return row


def put_profiles(engine: Engine, rows: list[dict]) -> None:
    table = UserProfile.__table__
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=["user_key"], set_={
        c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("user_key", "updated_at")}
        | {"updated_at": stmt.excluded.updated_at})
    with engine.begin() as conn:
        conn.execute(stmt, rows)


def put_activity(engine: Engine, rows: list[dict]) -> None:
    table = UserActivity.__table__
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=["user_key"], set_={
        k: stmt.excluded[k] for k in rows[0] if k != "user_key"})
    with engine.begin() as conn:
        conn.execute(stmt, rows)


def put_events(engine: Engine, rows: list[dict]) -> None:
    """rows: {event_id, user_key, kind, name, event_time} (+ any typed field)."""
    with engine.begin() as conn:
        conn.execute(insert(Event.__table__), [{"received_at": r["event_time"], "source": "test", **r} for r in rows])


def put_trigger(engine: Engine, kind: str, user_key: str, episode: str, fired_at: datetime) -> str:
    trigger_id = f"{kind}:{user_key}:{episode}"
    with engine.begin() as conn:
        conn.execute(pg_insert(BehaviourTrigger.__table__).values(
            trigger_id=trigger_id, kind=kind, user_key=user_key, episode=episode, fired_at=fired_at,
            details={"cart_value": "19.99"}).on_conflict_do_nothing())
    return trigger_id
