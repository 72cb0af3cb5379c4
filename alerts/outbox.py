"""PostgreSQL side of alert notifications: the outbox (``alert_notifications``). Blocking.

- ``add`` runs in the transaction that stores a transition, so a stored firing or resolved alert
  always has its notifications, and re-applying the transition adds none (unique per alert, notifier
  and status).
- ``claim`` takes a notifier's oldest due row and leases it: it moves ``next_attempt_at`` past the
  time one send can take and counts the attempt, under ``FOR UPDATE SKIP LOCKED``, so two processes
  delivering at once never send the same row while its lease holds. A process that dies holding a
  lease leaves the row to be claimed again when the lease ends: a receiver may get a notification
  twice (at-least-once), never zero times unless it was given up.
- a row waits while an older row of the same alert and notifier is pending: firing before resolved.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from spoor.storage.metric_tables import Alert, AlertNotification

NOTIFICATIONS = AlertNotification.__table__
ALERTS = Alert.__table__
PENDING = NOTIFICATIONS.c.sent_at.is_(None) & NOTIFICATIONS.c.failed_at.is_(None)

# Rows of :notifier that may go out, due or not: pending, and no older pending row of the same alert.
READY = """
    n.notifier = :notifier AND n.sent_at IS NULL AND n.failed_at IS NULL
    AND NOT EXISTS (SELECT 1 FROM alert_notifications older
                     WHERE older.alert_id = n.alert_id AND older.notifier = n.notifier AND older.id < n.id
                       AND older.sent_at IS NULL AND older.failed_at IS NULL)"""
CLAIM = text(f"""
    UPDATE alert_notifications
       SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => :lease_s)
     WHERE id = (SELECT n.id FROM alert_notifications n WHERE {READY} AND n.next_attempt_at <= now()
                  ORDER BY n.id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, alert, attempts""")
NEXT_DUE = text(f"SELECT extract(epoch FROM min(n.next_attempt_at) - now()) FROM alert_notifications n WHERE {READY}")


@dataclass(frozen=True)
class Claimed:
    id: int
    alert: dict  # the alert document at its transition
    attempts: int  # this one included


def add(conn: Connection, alert_id: int, status: str, document: dict, notifiers: Sequence[str]) -> int:
    """One pending row per notifier, in the caller's transaction; returns how many were new."""
    if not notifiers:
        return 0
    rows = [{"alert_id": alert_id, "notifier": name, "status": status, "alert": document} for name in notifiers]
    statement = insert(NOTIFICATIONS).values(rows).on_conflict_do_nothing(constraint="alert_notifications_transition")
    return conn.execute(statement).rowcount


def claim(engine: Engine, notifier: str, lease_s: float) -> Claimed | None:
    with engine.begin() as conn:
        row = conn.execute(CLAIM, {"notifier": notifier, "lease_s": lease_s}).first()
    return None if row is None else Claimed(row.id, row.alert, row.attempts)


def _set(engine: Engine, notification_id: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(NOTIFICATIONS).where(NOTIFICATIONS.c.id == notification_id).values(**values))


def mark_sent(engine: Engine, notification_id: int) -> None:
    _set(engine, notification_id, sent_at=func.now())


def retry_later(engine: Engine, notification_id: int, error: str, delay_s: float) -> None:
    _set(engine, notification_id, next_attempt_at=func.now() + timedelta(seconds=delay_s), last_error=error)


def give_up(engine: Engine, notification_id: int, error: str) -> None:
    _set(engine, notification_id, failed_at=func.now(), last_error=error)


def pending(engine: Engine, notifiers: Sequence[str]) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(NOTIFICATIONS).where(
            PENDING, NOTIFICATIONS.c.notifier.in_(list(notifiers)))).scalar_one()


def seconds_until_due(engine: Engine, notifier: str) -> float | None:
    """How long until a row of ``notifier`` may be claimed (0: one is due); None if none is pending."""
    with engine.connect() as conn:
        wait = conn.execute(NEXT_DUE, {"notifier": notifier}).scalar_one()
    return None if wait is None else max(0.0, float(wait))


def unsent(engine: Engine, limit: int = 50) -> list[dict]:
    """Pending and given-up notifications, newest first, with their alert's rule and series."""
    query = (select(NOTIFICATIONS.c.id, NOTIFICATIONS.c.notifier, NOTIFICATIONS.c.status, NOTIFICATIONS.c.alert_id,
                    ALERTS.c.rule_id, ALERTS.c.dimension, NOTIFICATIONS.c.created_at, NOTIFICATIONS.c.attempts,
                    NOTIFICATIONS.c.next_attempt_at, NOTIFICATIONS.c.failed_at, NOTIFICATIONS.c.last_error)
             .join(ALERTS, ALERTS.c.id == NOTIFICATIONS.c.alert_id)
             .where(NOTIFICATIONS.c.sent_at.is_(None))
             .order_by(NOTIFICATIONS.c.id.desc()).limit(limit))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
