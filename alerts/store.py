"""PostgreSQL side of alerts: episodes, silences, evaluation cursors. Blocking; idempotent writes.

An episode row is keyed by (fingerprint, started_at): re-applying a
transition after a crash updates the same row to the same values, and adds
no second notification (``outbox``).
"""

from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy import Connection, Engine, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from spoor.alerts import outbox
from spoor.alerts.engine import Evaluation
from spoor.alerts.notifiers import alert_document
from spoor.storage.metric_tables import Alert, AlertCursor, AlertSilence

ALERTS = Alert.__table__
NOTIFIED = ("firing", "resolved")  # pending and cancelled are stored, never notified


def alert_row(evaluation: Evaluation) -> dict:
    rule, transition = evaluation.rule, evaluation.transition
    status = str(transition.status)
    return {"fingerprint": transition.fingerprint, "rule_id": rule.id, "metric": rule.metric,
            "dimension": evaluation.dimension, "resolution": rule.resolution, "severity": rule.severity,
            "status": status, "started_at": transition.started_at,
            "fired_at": transition.at if status == "firing" else None,
            "resolved_at": transition.at if status == "resolved" else None,
            "evidence": transition.evidence, "summary": rule.summary, "runbook": rule.runbook}


def _upsert(row: dict):
    statement = insert(ALERTS).values(**row)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        constraint="alerts_episode",
        set_={"status": excluded.status, "evidence": excluded.evidence,
              "fired_at": func.coalesce(ALERTS.c.fired_at, excluded.fired_at),
              "resolved_at": func.coalesce(excluded.resolved_at, ALERTS.c.resolved_at),
              "updated_at": func.now()},
    ).returning(*ALERTS.c)


def record(engine: Engine, rows: list[dict], cursors: dict[str, datetime],
           notifiers: Sequence[str] = ()) -> list[dict]:
    """Store transitions, their notifications to ``notifiers`` (firing and resolved ones, unless
    silenced) and the evaluation cursors in one transaction; return the stored alerts."""
    stored = []
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for row in rows:
            alert = dict(conn.execute(_upsert(row)).one()._mapping)
            stored.append(alert)
            if alert["status"] in NOTIFIED and not _silenced(conn, alert["rule_id"], alert["fingerprint"], now):
                outbox.add(conn, alert["id"], alert["status"], alert_document(alert), notifiers)
        for resolution, until in cursors.items():
            statement = insert(AlertCursor.__table__).values(resolution=resolution, evaluated_until=until)
            conn.execute(statement.on_conflict_do_update(
                index_elements=["resolution"], set_={"evaluated_until": statement.excluded.evaluated_until}))
    return stored


def cursors(engine: Engine) -> dict[str, datetime]:
    with engine.connect() as conn:
        return {r.resolution: r.evaluated_until for r in conn.execute(select(AlertCursor))}


def silenced(engine: Engine, rule_id: str, fingerprint: str, now: datetime | None = None) -> bool:
    with engine.connect() as conn:
        return _silenced(conn, rule_id, fingerprint, now or datetime.now(timezone.utc))


def _silenced(conn: Connection, rule_id: str, fingerprint: str, now: datetime) -> bool:
    return conn.execute(select(func.count()).select_from(AlertSilence).where(
        AlertSilence.until > now, or_(AlertSilence.matcher == rule_id,
                                      AlertSilence.matcher == fingerprint))).scalar_one() > 0


def firing(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(ALERTS).where(ALERTS.c.status == "firing"))]


def list_alerts(engine: Engine, status: str | None = None, limit: int = 50) -> list[dict]:
    query = select(ALERTS).order_by(ALERTS.c.started_at.desc(), ALERTS.c.id.desc()).limit(limit)
    if status:
        query = query.where(ALERTS.c.status == status)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def acknowledge(engine: Engine, alert_id: int, by: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(update(ALERTS).where(ALERTS.c.id == alert_id)
                              .values(acked_at=func.now(), acked_by=by[:128], updated_at=func.now()))
    return result.rowcount == 1


def silence(engine: Engine, matcher: str, until: datetime, comment: str | None = None) -> int:
    with engine.begin() as conn:
        return conn.execute(insert(AlertSilence.__table__).values(matcher=matcher, until=until, comment=comment)
                            .returning(AlertSilence.__table__.c.id)).scalar_one()
