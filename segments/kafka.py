"""The Kafka producer segments and campaigns publish with (acks=all, idempotent), and topic creation."""

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from spoor.settings import Settings


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
