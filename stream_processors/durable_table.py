"""A Faust table whose changelog writes are sent per batch and can be awaited.

Faust flushes its producer before committing offsets, but that flush gives up
after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load an
offset can be committed while the changelog record of the state it produced is
still queued: a restart then restores stale state. The agent awaits
``changelog_durable()`` instead, before the batch's ack (beside its database write).

Writes are kept until then and sent straight to the producer, a key's last value
once: Faust's own path queues every write in its producer buffer (a future, a
callback and a RocksDB offset write per record), and its conductor stops
feeding the streams while that buffer holds more than 100 records. They go in
aiokafka's record batches (``create_batch``/``send_batch``: one future per batch,
not per record), each on the partition aiokafka's default partitioner would pick
for its key (murmur2, computed once per key: rocksdb_store.key_partition). Faust's
``on_produce_message`` signal, which its ``Producer.send`` fires per record, is not
sent: nothing in Spoor listens to it.
With a ``rocksdb://`` store it keeps each key in its own partition's database (rocksdb_store.py).
"""

import asyncio

from yarl import URL

from spoor.stream_processors.faust_internals import StoreChoosingTable, kafka_producer
from spoor.stream_processors.rocksdb_store import KeyPartitionedStore, key_partition


class DurableTable(StoreChoosingTable):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unsent_changelog: dict[bytes, bytes | None] = {}  # key -> latest value (None: deleted)

    def get(self, key, default=None):
        """One store read: ``Mapping.get`` asks the store whether the key exists, then reads it."""
        try:
            return self.data[key]
        except KeyError:
            return default

    def on_key_set(self, key, value) -> None:
        self.unsent_changelog[key] = value

    def on_key_del(self, key) -> None:
        self.unsent_changelog[key] = None

    async def changelog_durable(self) -> None:
        """Send the writes kept so far; return once the broker acknowledged every one (or raise)."""
        unsent, self.unsent_changelog = self.unsent_changelog, {}
        if not unsent:
            return
        topic = self.changelog_topic.get_topic_name()
        producer = kafka_producer(self.app)
        partitions = sorted(await producer.partitions_for(topic))  # as aiokafka's default partitioner
        by_partition: dict[int, list] = {}
        for key, value in unsent.items():
            by_partition.setdefault(partitions[key_partition(key, len(partitions))], []).append((key, value))
        sent = await asyncio.gather(*(send_in_batches(producer, topic, partition, records)
                                      for partition, records in by_partition.items()))
        latest = {}
        for deliveries in sent:
            for delivery, count in deliveries:
                metadata = await delivery
                last = metadata.offset + count - 1  # a batch's future holds its first record's offset
                latest[metadata.topic_partition] = max(last, latest.get(metadata.topic_partition, -1))
        for tp, offset in latest.items():
            # What Faust's per-record callback keeps: where a restart's recovery may start reading.
            self.data.set_persisted_offset(tp, offset)

    def store_for_url(self, url) -> KeyPartitionedStore | None:
        if URL(str(url)).scheme != "rocksdb":
            return None  # Faust's store for the URL
        return KeyPartitionedStore(url, self.app, self, table_name=self.name, key_type=self.key_type,
                                   key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                                   value_type=self.value_type, loop=self.loop, options=self.options)


async def send_in_batches(producer, topic: str, partition: int, records: list) -> list:
    """``records`` in full record batches (aiokafka's batch API), in order; returns (delivery, count) of each."""
    deliveries, batch = [], producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: the record starts the next
            batch.close()  # closed: sent without waiting for the producer's linger
            deliveries.append((await producer.send_batch(batch, topic, partition=partition), batch.record_count()))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a batch takes its first record whatever its size
    batch.close()
    deliveries.append((await producer.send_batch(batch, topic, partition=partition), batch.record_count()))
    return deliveries
