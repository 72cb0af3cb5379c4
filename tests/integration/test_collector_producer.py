"""The collector's producer (librdkafka) on the real broker: records land where the collector says, all
acknowledged before send_all returns, in the order sent; no broker means KafkaUnavailable, not a hang."""

import asyncio
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from spoor.ingest.producer import EventProducer, KafkaUnavailable
from spoor.topics import partition_for

pytestmark = pytest.mark.integration


def read_all(settings, topic: str, partitions: int) -> dict[int, list[tuple[bytes | None, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000)
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    got: dict[int, list] = {p: [] for p in range(partitions)}
    for record in consumer:
        got[record.partition].append((record.key, record.value))
    consumer.close()
    return got


def test_records_land_on_their_partition_in_order_and_are_acked_before_send_all_returns(test_settings):
    producer = EventProducer(test_settings)
    try:
        topic = test_settings.events_topic
        partitions = producer.partitions(topic)
        assert partitions == test_settings.topic_partitions
        users = [f"user-{i}" for i in range(40)]
        records = [(topic, partition_for(user, partitions), None, f"{user}:{n}".encode())
                   for n in range(3) for user in users]
        keyed = [(topic, None, user.encode(), f"{user}:keyed".encode()) for user in users]
        asyncio.run(producer.send_all(records[:60]))
        asyncio.run(producer.send_all(records[60:] + keyed))
        assert producer.last_failure is None

        got = read_all(test_settings, topic, partitions)  # nothing waits: send_all returned after the acks
        assert sum(len(values) for values in got.values()) == len(records) + len(keyed)
        for user in users:
            home = partition_for(user, partitions)  # a keyed record without a partition: Java's murmur2 too
            mine = [value.decode() for key, value in got[home] if value.startswith(f"{user}:".encode())]
            assert mine == [f"{user}:0", f"{user}:1", f"{user}:2", f"{user}:keyed"]
    finally:
        producer.close()


def test_an_unreachable_broker_is_kafka_unavailable_after_the_delivery_timeout(test_settings):
    producer = EventProducer(test_settings)  # metadata from the real broker first, as a running collector has
    try:
        partitions = producer.partitions(test_settings.events_topic)
    finally:
        producer.close()
    gone = test_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:9", "kafka_delivery_timeout_ms": 2000})
    producer = EventProducer(gone)
    try:
        with pytest.raises(KafkaUnavailable):
            producer.partitions(gone.events_topic)
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable):
            asyncio.run(producer.send_all([(gone.events_topic, partition_for("u", partitions), None,
                                            uuid.uuid4().bytes)]))
        assert 1.5 < time.monotonic() - started < 10
        assert producer.last_failure
    finally:
        producer.close()
