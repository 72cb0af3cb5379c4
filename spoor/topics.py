"""Spoor's Kafka topics: their creation (the broker never auto-creates them), the partition a user's
records go to, and the producer that segments, campaigns and erasure publish with."""

import time
from functools import lru_cache

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from spoor.settings import Settings


def spoor_topics(settings: Settings) -> list[NewTopic]:
    retention = {"retention.ms": str(settings.topic_retention_ms), "min.insync.replicas": "1"}
    return [
        # The broker stamps each record with its own clock: the worker holds an event's claimed time
        # to that stamp plus SPOOR_MAX_FUTURE_EVENT_S, whoever produced the record.
        NewTopic(settings.events_topic, settings.topic_partitions, 1,
                 topic_configs={**retention, "message.timestamp.type": "LogAppendTime"}),
        # Bad rows are kept longer: someone has to look at them and replay them.
        NewTopic(settings.dead_letter_topic, 1, 1,
                 topic_configs={**retention, "retention.ms": str(4 * settings.topic_retention_ms)}),
        # Behavioural triggers, keyed by user key, for campaigns (docs/analytics.md, "Behavioural triggers").
        NewTopic(settings.triggers_topic, settings.topic_partitions, 1, topic_configs=retention),
        # Alert transitions (spoor.alert/1 JSON keyed by fingerprint), for other systems to act on.
        NewTopic(settings.alerts_topic, 1, 1, topic_configs={**retention, "retention.ms": str(4 * settings.topic_retention_ms)}),
    ]


def _admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")


def create_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names created. Existing ones are checked, not changed."""
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
        return [t.name for t in missing]
    finally:
        admin.close()


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
    """Create the segments, triggers and campaign dead-letter topics if missing."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-admin")
    config = {"retention.ms": str(settings.topic_retention_ms)}
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, settings.topic_partitions, 1, topic_configs=config)
                  for name in (settings.segments_topic, settings.triggers_topic, settings.campaigns_dead_letter_topic)
                  if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in wanted]
    finally:
        admin.close()
