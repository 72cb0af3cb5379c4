"""Erasing a user: PostgreSQL rows, Faust table state, and an audit record.

- Every base table with a ``user_key`` column loses the user's rows (found from the catalogue, so tables
  added by other areas are covered too), and dead letters whose payload names the user go as well.
- A tombstone (the user key, raw bytes as the worker's tables use, with a null value) is written to
  every changelog topic of the worker's Faust app (``<SPOOR_WORKER_APP_ID>-*-changelog``), on the
  partition the default partitioner picks for the key, as the worker's own writes. Compaction then
  drops the state, and a worker restoring its tables no longer sees the user.
- ``privacy_audit_log`` records the erasure with the SHA-256 of the key (not the key), the actor, and
  what was removed.

Limit: a running worker keeps the user's state in memory until it restarts; an event arriving
for the user before then recreates the profile from that state.
"""

import hashlib

from kafka.admin import KafkaAdminClient
from sqlalchemy import Engine, MetaData, Table, delete, or_, text

from segments.kafka import create_producer
from spoor.settings import Settings
from storage.segments_models import AuditLog

TABLES_WITH_USER_KEY = text("""
    SELECT c.table_name FROM information_schema.columns c
      JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
     WHERE c.table_schema = current_schema() AND c.column_name = 'user_key' AND t.table_type = 'BASE TABLE'
     ORDER BY c.table_name
""")


def changelog_topics(settings: Settings) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")
    try:
        prefix = f"{settings.worker_app_id}-"
        return sorted(t for t in admin.list_topics() if t.startswith(prefix) and t.endswith("-changelog"))
    finally:
        admin.close()


def erase_user(settings: Settings, engine: Engine, user_key: str, actor: str) -> dict:
    """Remove the user everywhere; idempotent, so a failed erasure is simply run again."""
    key_hash = hashlib.sha256(user_key.encode()).hexdigest()
    audit = AuditLog.__table__
    removed: dict[str, int] = {}
    with engine.begin() as conn:  # the rows and the audit record of their removal commit together
        metadata = MetaData()
        for name in conn.execute(TABLES_WITH_USER_KEY).scalars():
            table = Table(name, metadata, autoload_with=conn)
            removed[name] = conn.execute(delete(table).where(table.c.user_key == user_key)).rowcount
        dead = Table("dead_letters", metadata, autoload_with=conn)
        removed["dead_letters"] = conn.execute(delete(dead).where(or_(
            dead.c.payload["userId"].astext == user_key, dead.c.payload["anonymousId"].astext == user_key,
            dead.c.payload["user_key"].astext == user_key))).rowcount
        rows_removed = {k: v for k, v in removed.items() if v}
        conn.execute(audit.insert().values(action="erase_rows", user_key_sha256=key_hash, actor=actor[:128],
                                           details={"rows_removed": rows_removed}))
    topics = changelog_topics(settings)
    producer = create_producer(settings, "spoor-erase")
    try:
        for future in [producer.send(topic, key=user_key.encode(), value=None) for topic in topics]:
            future.get(timeout=30)
    finally:
        producer.close()
    with engine.begin() as conn:
        conn.execute(audit.insert().values(action="erase_state", user_key_sha256=key_hash, actor=actor[:128],
                                           details={"tombstones": topics}))
    return {"rows_removed": rows_removed, "tombstones": topics}
