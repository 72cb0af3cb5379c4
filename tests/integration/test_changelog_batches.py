"""DurableTable.changelog_durable on the real broker: the batch's table writes go out in aiokafka record
batches, each key's last value once, on the partition aiokafka's default partitioner picks for the key
(as Faust's per-record send did), and once it returns every record is in the log and the store keeps each
partition's last changelog offset (where a restart's recovery may start reading)."""

import asyncio
import uuid

import faust
import pytest
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from spoor.stream_processors.durable_table import DurableTable
from tests.support.local_stack import run_id

pytestmark = pytest.mark.integration
PARTITIONS = 4
BATCH_BYTES = 16384  # the producer's batch size: ~20 records of 700 bytes, so each partition gets several batches


def read_all(bootstrap: str, topic: str) -> dict[int, list]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=3000)
    assigned = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    got: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for record in consumer:
        got[record.partition].append((record.offset, record.key, record.value))
    consumer.close()
    return got


def test_changelog_records_go_in_batches_to_their_keys_partitions_and_their_offsets_are_kept(base_settings, tmp_path):
    bootstrap = base_settings.kafka_bootstrap
    app = faust.App(f"changelog-{run_id(8)}", broker=f"kafka://{bootstrap}", store="rocksdb://",
                    datadir=str(tmp_path), key_serializer="raw", value_serializer="raw", producer_acks=-1,
                    producer_max_batch_size=BATCH_BYTES)
    table = DurableTable(app, name="profiles", partitions=PARTITIONS, use_partitioner=True, key_type=bytes,
                         value_type=bytes, options={"driver": "rocksdict"})
    topic = table.changelog_topic.get_topic_name()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    keys = [f"user-{i}-{uuid.uuid4().hex}".encode() for i in range(400)]
    expected = {key: key + b":" + b"v" * 600 for key in keys}

    async def write_twice() -> None:
        await app.producer.start()
        try:
            for key in keys:
                table.on_key_set(key, b"first value, replaced in the same batch")
            for key in keys:
                table.on_key_set(key, expected[key])
            table.on_key_del(keys[0])  # a tombstone
            expected[keys[0]] = None
            await table.changelog_durable()
            assert table.unsent_changelog == {}
            await table.changelog_durable()  # nothing kept: nothing sent
        finally:
            await app.producer.stop()

    try:
        asyncio.run(write_twice())
        got = read_all(bootstrap, topic)
    finally:
        admin.delete_topics([topic])
        admin.close()

    partitioner = DefaultPartitioner()
    everything = list(range(PARTITIONS))
    for partition, records in got.items():
        ours = [key for key in keys if partitioner(key, everything, everything) == partition]
        assert [key for _offset, key, _value in records] == ours  # each key once, where Faust's send put it
        assert all(value == expected[key] for _offset, key, value in records)
        assert len(records) > BATCH_BYTES // 700  # more than one record batch
        assert table.data.persisted_offset(TopicPartition(topic, partition)) == records[-1][0]
