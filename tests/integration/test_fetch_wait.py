"""faust_internals.wait_longer_when_idle on the real broker: an idle consumer asks for records every idle wait, not
every fetch wait, and a record sent to it still arrives at once (the long wait is a fetch of every partition,
which the broker answers as soon as one has a record)."""

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from spoor.stream_processors.faust_internals import wait_longer_when_idle

PARTITIONS = 3
BUSY_MS, IDLE_MS = 50, 3000


async def fetches_and_delays(bootstrap: str, topic: str, idle: bool) -> tuple[int, list[float]]:
    """Fetch requests sent in 2 s of nothing, then how long each of 5 records (one every 0.4 s, on the partitions
    in turn) took from its send to the consumer."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"fetch-wait-{uuid.uuid4().hex}",
                                auto_offset_reset="latest", fetch_max_wait_ms=BUSY_MS)
    if idle:
        wait_longer_when_idle(consumer, IDLE_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.seek_to_end(tp)
        await consumer.getmany(timeout_ms=500)  # positions resolved, the first fetch of every partition out
        sent = []
        fetcher = consumer._fetcher
        build = fetcher._get_actions_per_node

        def counted(assignment):
            requests = build(assignment)
            sent.extend(requests[0])
            return requests
        fetcher._get_actions_per_node = counted
        await asyncio.sleep(2.0)
        fetches = len(sent)
        delays = []
        for n in range(5):
            started = time.monotonic()
            await producer.send_and_wait(topic, b"x", partition=n % PARTITIONS)
            records = {}
            while not records:
                records = await consumer.getmany(timeout_ms=5000)
                assert records or time.monotonic() - started < 10, "a record never arrived"
            delays.append(time.monotonic() - started)
            await asyncio.sleep(0.4)
        return fetches, delays
    finally:
        await producer.stop()
        await consumer.stop()


def test_an_idle_consumer_fetches_less_often_and_a_record_still_arrives_at_once(base_settings):
    bootstrap = base_settings.kafka_bootstrap
    topic = f"fetch-wait-{uuid.uuid4().hex}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    try:
        busy_fetches, busy_delays = asyncio.run(fetches_and_delays(bootstrap, topic, idle=False))
        idle_fetches, idle_delays = asyncio.run(fetches_and_delays(bootstrap, topic, idle=True))
    finally:
        admin.delete_topics([topic])
        admin.close()
    assert busy_fetches >= 10  # 2 s at 50 ms (~39 on a quiet machine): the check below can fail
    assert idle_fetches <= 2  # 2 s at 3 s: the fetch out when the 2 s began, perhaps one more
    assert max(idle_delays) < 1.0, f"records waited {idle_delays} (a parked fetch would hold one up to 3 s)"
    assert max(busy_delays) < 1.0
