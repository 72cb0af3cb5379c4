"""Erasing a person: the running worker's state, PostgreSQL rows, changelog state, and an audit record.
What reaches the copies on Kafka, store by store, is in docs/privacy.md ("Erasure reaches every copy").

In this order, so nothing of the person's past survives anywhere once it returns:
1. An erasure record goes to the events topic on the id's partition (spoor/events.py), behind the
   id's events. The worker drops the id's table state when it reads it, deletes its rows in the
   transaction of that batch, and starts a fresh profile from any later event. The command waits
   (``erase_worker_wait_s``) until the worker group's committed offset passes the record.
2. Every base table with a ``user_key`` column loses the rows of the ids (found from the catalogue, so
   tables added by other areas are covered too; ``campaign_attempts`` go with their deliveries), and
   the dead letters that name an id anywhere in their payload or request go as well;
   ``privacy_audit_log`` records it with the HMAC of each id (never the id), the actor, and what was
   removed, in the same transaction.
3. The worker's changelog topics (``<SPOOR_WORKER_APP_ID>-*-changelog``) get configs that bound their
   compaction (spoor/topics.py), then a tombstone per id (the raw key, null value) on the partition the
   default partitioner picks for it: compaction drops the state, then the tombstone, within
   ``SPOOR_PERSONAL_TOPIC_RETENTION_HOURS``. The other topics holding the person's records (events, dead
   letters, triggers, segments, campaign dead letters) cannot be compacted: their retention is the
   erasure deadline, reported as ``kafka_erased_by``.

When no worker is running (the group has no members), step 1 does not wait, and a worker that
stops during the wait ends it: the worker applies the record when it next reads the partition, and
the result says the worker had not confirmed it yet. The wait is bounded in any case.

A person is one shopper with several ids (storage/identities.py, docs/identity.md): the key given may be
any of them. The user it belongs to is found, with every id merged into that user or linked to it and
merged nowhere else (anonymous ids included), and each of them is erased the same way.

The audit's hash is keyed (HMAC-SHA256 under SPOOR_AUDIT_HMAC_KEY): a plain SHA-256 of an e-mail address
or a short id is reversed by hashing guesses; without the key it is not. No key, no erasure: the
command refuses before touching anything, and the admin API does not start (``require_audit_key``).
"""

import hashlib
import hmac
import time
from datetime import datetime, timedelta, timezone

from kafka.admin import KafkaAdminClient
from sqlalchemy import Connection, Engine, MetaData, Table, delete, text

from spoor.events import erasure_record
from spoor.privacy import PrivacyError
from spoor.settings import Settings
from spoor.storage.identities import TABLES_WITH_USER_KEY, erasable_ids
from spoor.storage.segment_tables import AuditLog
from spoor.storage.tables import UserIdentity
from spoor.topics import (
    apply_configs,
    changelog_erasure_configs,
    changelog_topics,
    create_producer,
    erasure_deadline_s,
    partition_for,
)

IDENTITIES = UserIdentity.__table__
MIN_AUDIT_KEY_CHARS = 32

# A dead letter names an id when an identity field anywhere in its payload or request holds it (a batch
# refused whole holds many messages), or when a payload kept as raw text (not JSON) quotes it.
NAMED_IDS = "(@.userId == $k || @.anonymousId == $k || @.previousId == $k || @.user_key == $k || " \
            "@.anonymous_id == $k || @.user_id == $k || @.erase_user_key == $k)"
DEAD_LETTERS_OF = text(f"""
    DELETE FROM dead_letters d
     WHERE EXISTS (SELECT 1 FROM unnest(CAST(:keys AS text[])) AS k
                    WHERE jsonb_path_exists(d.payload, '$.** ? {NAMED_IDS}', jsonb_build_object('k', k))
                       OR jsonb_path_exists(COALESCE(d.request, '{{}}'), '$.** ? {NAMED_IDS}', jsonb_build_object('k', k))
                       OR (jsonb_typeof(d.payload -> 'raw') = 'string'
                           AND strpos(d.payload ->> 'raw', to_json(k)::text) > 0))""")
# Who received the person's data from a campaign (GDPR art. 19: recipients are told of the erasure).
RECIPIENTS = text("""
    SELECT DISTINCT d.campaign, COALESCE(c.definition #>> '{action,webhook}', 'kafka:' || (c.definition #>> '{action,kafka_topic}'))
      FROM campaign_deliveries d JOIN campaigns c ON c.name = d.campaign
     WHERE d.user_key = ANY(:keys) AND d.status = 'sent' ORDER BY 1""")


class AuditKeyMissing(PrivacyError):
    """SPOOR_AUDIT_HMAC_KEY is not set, or too short to be a secret."""


def require_audit_key(settings: Settings) -> bytes:
    key = settings.audit_hmac_key
    if len(key) < MIN_AUDIT_KEY_CHARS:
        raise AuditKeyMissing(
            f"SPOOR_AUDIT_HMAC_KEY is {'not set' if not key else 'shorter than 32 characters'}: erasure records "
            "a keyed hash of each erased id in privacy_audit_log and needs a secret key "
            "(e.g. `openssl rand -hex 32`, kept out of the database)")
    return key.encode()


def audit_hash(key: bytes, user_key: str) -> str:
    """What ``privacy_audit_log`` keeps of an id: its HMAC-SHA256, hex (`spoor users erased ID` looks it up)."""
    return hmac.new(key, user_key.encode(), hashlib.sha256).hexdigest()


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
    """Remove the person everywhere; idempotent, so a failed erasure is simply run again."""
    audit_key = require_audit_key(settings)  # before anything is erased
    producer = create_producer(settings, "spoor-erase")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")
    try:
        return _erase(settings, audit_key, engine, producer, admin, user_key, actor)
    finally:
        producer.close()
        admin.close()


def erased_entries(settings: Settings, engine: Engine, user_key: str) -> list[dict]:
    """The audit rows of erasures that named ``user_key`` (as the id asked for or one of its ids)."""
    digest = audit_hash(require_audit_key(settings), user_key)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, action, actor, at, details FROM privacy_audit_log"
            " WHERE user_key_hmac = :h OR details -> 'ids_hmac' ? :h ORDER BY id"), {"h": digest}).all()
    return [dict(row._mapping) for row in rows]


def _delete_rows(conn: Connection, keys: list[str]) -> dict[str, int]:
    metadata = MetaData()
    removed: dict[str, int] = {}
    for name in conn.execute(TABLES_WITH_USER_KEY).scalars():
        table = Table(name, metadata, autoload_with=conn)
        removed[name] = conn.execute(delete(table).where(table.c.user_key.in_(keys))).rowcount
    # Rows naming an erased id as the linked id (the user_key side went above).
    removed["user_identities"] = removed.get("user_identities", 0) + conn.execute(
        delete(IDENTITIES).where(IDENTITIES.c.id.in_(keys))).rowcount
    removed["dead_letters"] = conn.execute(DEAD_LETTERS_OF, {"keys": keys}).rowcount
    return {k: v for k, v in removed.items() if v}


def _erase(settings: Settings, audit_key: bytes, engine: Engine, producer, admin: KafkaAdminClient, user_key: str,
           actor: str) -> dict:
    with engine.connect() as conn:
        _user, keys = erasable_ids(conn, user_key)
    if user_key not in keys:  # the id asked for goes whatever its graph says (an id refused to everyone)
        keys.append(user_key)
    worker_confirmed = erase_in_worker(settings, producer, admin, *keys)
    key_hash = audit_hash(audit_key, user_key)
    ids_hmac = sorted(audit_hash(audit_key, key) for key in keys)
    audit = AuditLog.__table__
    with engine.begin() as conn:  # the rows and the audit record of their removal commit together
        recipients = [{"campaign": campaign, "action": action} for campaign, action in
                      conn.execute(RECIPIENTS, {"keys": keys})]
        rows_removed = _delete_rows(conn, keys)
        conn.execute(audit.insert().values(action="erase_rows", user_key_hmac=key_hash, actor=actor[:128],
                                           details={"rows_removed": rows_removed, "ids_erased": len(keys),
                                                    "ids_hmac": ids_hmac, "recipients": recipients}))
    topics = changelog_topics(admin, settings.worker_app_id)
    apply_configs(admin, dict.fromkeys(topics, changelog_erasure_configs(settings)))  # so compaction comes in time
    for future in [producer.send(topic, key=key.encode(), value=None) for topic in topics for key in keys]:
        future.get(timeout=30)
    erased_by = (datetime.now(timezone.utc) + timedelta(seconds=erasure_deadline_s(settings))).isoformat()
    with engine.begin() as conn:
        conn.execute(audit.insert().values(action="erase_state", user_key_hmac=key_hash, actor=actor[:128],
                                           details={"tombstones": topics, "worker_state_erased": worker_confirmed,
                                                    "ids_erased": len(keys), "kafka_erased_by": erased_by}))
    return {"worker_state_erased": worker_confirmed, "rows_removed": rows_removed, "tombstones": topics,
            "ids_erased": len(keys), "kafka_erased_by": erased_by, "recipients": recipients}
