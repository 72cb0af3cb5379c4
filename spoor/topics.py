"""Spoor's Kafka topics: their creation (the broker never auto-creates them), the partition a user's
records go to, and the producer that segments, campaigns and erasure publish with.

Erasure reaches the copies on Kafka by the topics' configs (docs/privacy.md, "Erasure reaches every
copy"): a topic that carries shoppers' data and whose consumers need every record keeps it for
``SPOOR_PERSONAL_TOPIC_RETENTION_HOURS`` in small segments (Kafka deletes whole segments), and the
worker's changelogs, keyed by user, are compacted within the same bound once erasure tombstones them.
Both are applied to existing topics too, not only when a topic is created.
"""

import time
from functools import lru_cache

from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from spoor.settings import Settings

HOUR_MS = 3_600_000
BROKER_RETENTION_CHECK_S = 300  # Kafka's log.retention.check.interval.ms default: how late a deletion may run


def personal_retention(settings: Settings) -> dict[str, str]:
    """Configs of a topic that carries shoppers' data and cannot be compacted: its retention is the
    erasure deadline of its records. A segment is deleted once its newest record is past the retention,
    so a segment spans at most an hour: a record outlives the retention by one segment at most."""
    retention_ms = max(1000, round(settings.personal_topic_retention_hours * HOUR_MS))
    return {"cleanup.policy": "delete", "retention.ms": str(retention_ms),
            "segment.ms": str(min(retention_ms, HOUR_MS))}


def changelog_erasure_configs(settings: Settings) -> dict[str, str]:
    """Configs of the worker's compacted changelogs so that a tombstone erases within the same bound: a
    dirty segment is compacted within half the retention (the older values of the key go), and the
    tombstone itself (it holds the key, an id) within the other half."""
    retention_ms = int(personal_retention(settings)["retention.ms"])
    return {"segment.ms": str(min(retention_ms, HOUR_MS)), "max.compaction.lag.ms": str(max(1, retention_ms // 2)),
            "delete.retention.ms": str(retention_ms // 2)}


def erasure_deadline_s(settings: Settings) -> float:
    """How long after an erasure its records on Kafka may still be read (with the broker's default check)."""
    configs = personal_retention(settings)
    return (int(configs["retention.ms"]) + int(configs["segment.ms"])) / 1000 + BROKER_RETENTION_CHECK_S


def spoor_topics(settings: Settings) -> list[NewTopic]:
    personal = {**personal_retention(settings), "min.insync.replicas": "1"}
    return [
        # The broker stamps each record with its own clock: the worker holds an event's claimed time
        # to that stamp plus SPOOR_MAX_FUTURE_EVENT_S, whoever produced the record.
        NewTopic(settings.events_topic, settings.topic_partitions, 1,
                 topic_configs={**personal, "message.timestamp.type": "LogAppendTime"}),
        # Bad rows carry payloads and traits: the same deadline; the dead_letters table keeps them for people.
        NewTopic(settings.dead_letter_topic, 1, 1, topic_configs=personal),
        # Behavioural triggers, keyed by user key, for campaigns (docs/analytics.md, "Behavioural triggers").
        NewTopic(settings.triggers_topic, settings.topic_partitions, 1, topic_configs=personal),
        # Alert transitions (spoor.alert/1 JSON keyed by fingerprint), for other systems to act on.
        NewTopic(settings.alerts_topic, 1, 1, topic_configs={"min.insync.replicas": "1",
                                                             "retention.ms": str(4 * settings.topic_retention_ms)}),
    ]


def _admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")


def create_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names created. Existing ones are checked (partitions) and get
    the configs above (retention: the erasure deadline), as do the worker's changelogs."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = spoor_topics(settings)
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:  # created by a concurrent caller: fine
                pass
        for topic in _described(admin, [t.name for t in wanted]):
            want = next(t for t in wanted if t.name == topic["name"])
            have = len(topic["partitions"])
            if have != want.num_partitions:
                raise RuntimeError(f"topic {want.name} has {have} partitions, Spoor expects "
                                   f"{want.num_partitions} (SPOOR_TOPIC_PARTITIONS)")
        apply_configs(admin, {t.name: t.topic_configs for t in wanted if t.name in existing})
        apply_configs(admin, dict.fromkeys(changelog_topics(admin, settings.worker_app_id),
                                           changelog_erasure_configs(settings)))
        return [t.name for t in missing]
    finally:
        admin.close()


def ensure_topic_configs(settings: Settings) -> list[str]:
    """At a worker's start: the existing topics it reads and writes, and its changelogs, get the configs
    above if they differ (a topic created by hand or before this release); returns the topics changed."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        changed = apply_configs(admin, {t.name: t.topic_configs for t in spoor_topics(settings) if t.name in existing})
        return changed + apply_configs(admin, dict.fromkeys(changelog_topics(admin, settings.worker_app_id),
                                                            changelog_erasure_configs(settings)))
    finally:
        admin.close()


def changelog_topics(admin: KafkaAdminClient, worker_app_id: str) -> list[str]:
    """The worker's Faust table changelogs (``<app id>-<table>-changelog``), compacted and keyed by id."""
    prefix = f"{worker_app_id}-"
    return sorted(t for t in admin.list_topics() if t.startswith(prefix) and t.endswith("-changelog"))


def apply_configs(admin: KafkaAdminClient, wanted: dict[str, dict[str, str]]) -> list[str]:
    """Set the given configs on existing topics where they differ (an incremental change: the topic's
    other configs stay); returns the topics changed. Raises if the broker refuses."""
    if not wanted:
        return []
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    described = admin.describe_configs(resources, config_filter="all")["topic"]
    changes = {name: {key: value for key, value in configs.items()
                      if str(described.get(name, {}).get(key, {}).get("value")) != value}
               for name, configs in wanted.items()}
    changes = {name: configs for name, configs in changes.items() if configs}
    if changes:
        result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)
                                      for name, configs in changes.items()])
        refused = {name: outcome for name, outcome in result.get("topic", {}).items() if outcome != "OK"}
        if refused:
            raise RuntimeError(f"Kafka refused the topic configs of {refused}")
    return sorted(changes)


def _described(admin: KafkaAdminClient, names: list[str], timeout_s: float = 10.0) -> list[dict]:
    """describe_topics, waiting while a just-created topic still shows no partitions (metadata lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.describe_topics(names)
        if all(topic["partitions"] for topic in topics) or time.monotonic() > deadline:
            return topics
        time.sleep(0.2)


def missing_topics(settings: Settings) -> list[str]:
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [t.name for t in spoor_topics(settings) if t.name not in existing]


@lru_cache(maxsize=65536)  # kafka-python's murmur2 is pure Python; a batch repeats its users
def partition_for(user_key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java, kafka-python, aiokafka) picks for key=user_key."""
    return (murmur2(user_key.encode()) & 0x7FFFFFFF) % partitions


def create_producer(settings: Settings, client_id: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id=client_id,
                         acks="all", enable_idempotence=True, linger_ms=5, max_block_ms=10_000,
                         request_timeout_ms=10_000, allow_auto_create_topics=False)


def create_segment_topics(settings: Settings) -> list[str]:
    """Create the segments, triggers and campaign dead-letter topics if missing; existing ones get the
    personal retention (the erasure deadline) if theirs differs."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")
    config = personal_retention(settings)
    names = (settings.segments_topic, settings.triggers_topic, settings.campaigns_dead_letter_topic)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, settings.topic_partitions, 1, topic_configs=config)
                  for name in names if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        apply_configs(admin, {name: config for name in names if name in existing})
        return [t.name for t in wanted]
    finally:
        admin.close()
