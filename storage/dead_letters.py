"""Queries on the ``dead_letters`` table for ``spoor dead-letters list|replay``."""

from datetime import datetime

from sqlalchemy import Engine, select, update

from spoor.storage.tables import DeadLetter


def find_dead_letters(engine: Engine, *, since: datetime | None = None, reason: str | None = None,
                      failure_type: str | None = None, processor: str | None = None,
                      ids: list[str] | None = None, include_replayed: bool = True,
                      limit: int | None = None) -> list[dict]:
    """Dead letters, oldest first. ``reason`` matches part of the reason or field, case-insensitively."""
    query = select(DeadLetter.__table__).order_by(DeadLetter.received_at, DeadLetter.id)
    if since is not None:
        query = query.where(DeadLetter.received_at >= since)
    if reason:
        pattern = "%" + reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(DeadLetter.reason.ilike(pattern) | DeadLetter.field.ilike(pattern))
    if failure_type:
        query = query.where(DeadLetter.failure_type == failure_type)
    if processor:
        query = query.where(DeadLetter.processor == processor)
    if ids:
        query = query.where(DeadLetter.id.in_(ids))
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def mark_replayed(engine: Engine, ids: list[str], at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(update(DeadLetter).where(DeadLetter.id.in_(ids)).values(replayed_at=at))
