"""Erasing a user: the running worker's state, PostgreSQL rows, changelog state, and an audit record.

In this order, so nothing of the user's past survives anywhere once it returns:
1. An erasure record goes to the events topic on the user's partition (spoor/events.py), behind the
   user's events. The worker drops the user's table state when it reads it, deletes the user's rows
   in the transaction of that batch, and starts a fresh profile from any later event. The command
   waits (``erase_worker_wait_s``) until the worker group's committed offset passes the record.
2. Every base table with a ``user_key`` column loses the user's rows (found from the catalogue, so
   tables added by other areas are covered too), and dead letters whose payload names the user go
   as well; ``privacy_audit_log`` records it with the SHA-256 of the key (not the key), the actor,
   and what was removed.
3. A tombstone (the user key, raw bytes as the worker's tables use, with a null value) is written to
   every changelog topic of the worker's Faust app (``<SPOOR_WORKER_APP_ID>-*-changelog``), on the
   partition the default partitioner picks for the key. Compaction then drops the state.

When no worker is running (the group has no members), step 1 does not wait, and a worker that
stops during the wait ends it: the worker applies the record when it next reads the partition, and
the result says the worker had not confirmed it yet. The wait is bounded in any case.

A user is one shopper with several ids (storage/identities.py, docs/identity.md): the key given may be
any of them. The user it belongs to is found, with every id merged into that user or linked to it and
merged nowhere else, and each of them is erased the same way: its erasure record, its rows, its
``user_identities`` rows (as the id and as the user), its tombstones. The audit log counts the ids and
keeps their SHA-256 only.
"""

import hashlib
import time

from kafka.admin import KafkaAdminClient
from sqlalchemy import Engine, MetaData, Table, delete, or_

from spoor.events import erasure_record
from spoor.settings import Settings
from spoor.storage.identities import TABLES_WITH_USER_KEY, erasable_ids
from spoor.storage.segment_tables import AuditLog
from spoor.storage.tables import UserIdentity
from spoor.topics import create_producer, partition_for

IDENTITIES = UserIdentity.__table__


def changelog_topics(admin: KafkaAdminClient, worker_app_id: str) -> list[str]:
    prefix = f"{worker_app_id}-"
    return sorted(t for t in admin.list_topics() if t.startswith(prefix) and t.endswith("-changelog"))


def erase_in_worker(settings: Settings, producer, admin: KafkaAdminClient, user_key: str, *more_keys: str) -> bool:
    """Step 1 of the module docstring, for each key (the records are all sent first, then waited for
    together); True once the worker group committed past every erasure record."""
    partitions = len(producer.partitions_for(settings.events_topic) or ())
    if not partitions:
        raise RuntimeError(f"topic {settings.events_topic} does not exist")
    futures = [producer.send(settings.events_topic, value=erasure_record(key), partition=partition_for(key, partitions))
               for key in dict.fromkeys((user_key, *more_keys))]
    written = {}  # the last record sent to each partition
    for future in futures:
        metadata = future.get(timeout=30)
        if metadata.offset >= written.get(metadata.topic_partition, -1):
            written[metadata.topic_partition] = metadata.offset
    deadline = time.monotonic() + settings.erase_worker_wait_s
    while True:
        committed = _committed_offsets(admin, settings.worker_app_id)
        if all(committed.get(tp) is not None and committed[tp].offset > offset for tp, offset in written.items()):
            return True
        if time.monotonic() > deadline or not _has_members(admin, settings.worker_app_id):
            return False
        time.sleep(0.5)


def _has_members(admin: KafkaAdminClient, group: str) -> bool:
    if hasattr(admin, "describe_groups"):  # kafka-python 3
        return bool(admin.describe_groups([group]).get(group, {}).get("members"))
    return any(info.members for info in admin.describe_consumer_groups([group]))  # kafka-python 2


def _committed_offsets(admin: KafkaAdminClient, group: str) -> dict:
    if hasattr(admin, "list_group_offsets"):  # kafka-python 3
        return admin.list_group_offsets({group: None}).get(group, {})
    return admin.list_consumer_group_offsets(group)  # kafka-python 2


def erase_user(settings: Settings, engine: Engine, user_key: str, actor: str) -> dict:
    """Remove the user everywhere; idempotent, so a failed erasure is simply run again."""
    producer = create_producer(settings, "spoor-erase")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")
    try:
        return _erase(settings, engine, producer, admin, user_key, actor)
    finally:
        producer.close()
        admin.close()


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _erase(settings: Settings, engine: Engine, producer, admin: KafkaAdminClient, user_key: str, actor: str) -> dict:
    with engine.connect() as conn:
        _user, keys = erasable_ids(conn, user_key)
    if user_key not in keys:  # the id asked for goes whatever its graph says (an id refused to everyone)
        keys.append(user_key)
    worker_confirmed = erase_in_worker(settings, producer, admin, *keys)
    key_hash = _sha256(user_key)
    audit = AuditLog.__table__
    removed: dict[str, int] = {}
    with engine.begin() as conn:  # the rows and the audit record of their removal commit together
        metadata = MetaData()
        for name in conn.execute(TABLES_WITH_USER_KEY).scalars():
            table = Table(name, metadata, autoload_with=conn)
            removed[name] = conn.execute(delete(table).where(table.c.user_key.in_(keys))).rowcount
        # Rows naming an erased id as the linked id (the user_key side went above).
        removed["user_identities"] = removed.get("user_identities", 0) + conn.execute(
            delete(IDENTITIES).where(IDENTITIES.c.id.in_(keys))).rowcount
        dead = Table("dead_letters", metadata, autoload_with=conn)
        removed["dead_letters"] = conn.execute(delete(dead).where(or_(
            dead.c.payload["userId"].astext.in_(keys), dead.c.payload["anonymousId"].astext.in_(keys),
            dead.c.payload["user_key"].astext.in_(keys)))).rowcount
        rows_removed = {k: v for k, v in removed.items() if v}
        conn.execute(audit.insert().values(action="erase_rows", user_key_sha256=key_hash, actor=actor[:128],
                                           details={"rows_removed": rows_removed, "ids_erased": len(keys),
                                                    "ids_sha256": sorted(map(_sha256, keys))}))
    topics = changelog_topics(admin, settings.worker_app_id)
    for future in [producer.send(topic, key=key.encode(), value=None) for topic in topics for key in keys]:
        future.get(timeout=30)
    with engine.begin() as conn:
        conn.execute(audit.insert().values(action="erase_state", user_key_sha256=key_hash, actor=actor[:128],
                                           details={"tombstones": topics, "worker_state_erased": worker_confirmed,
                                                    "ids_erased": len(keys)}))
    return {"worker_state_erased": worker_confirmed, "rows_removed": rows_removed, "tombstones": topics,
            "ids_erased": len(keys)}
