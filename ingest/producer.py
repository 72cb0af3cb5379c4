"""Kafka producer for the collector: returns only when the broker acked every record.

librdkafka (confluent-kafka) batches, sends and retries from its own C threads; ``produce`` only
queues a record and returns. This class hands the records of a request to it from the event loop
(in request order, so a user's events keep their order across requests) and bridges the delivery
reports, served by one thread of its own, to an asyncio future per request: a request awaits "all
my records are durable" (acks=all, idempotent producer) or the first failure.

Records carry their partition (``spoor.topics.partition_for``, Kafka's default partitioner on the
user key); one without a partition is placed by the Java client's partitioner (murmur2) on its key.
"""

import asyncio
import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Producer

from spoor.ingest import IngestError
from spoor.settings import Settings

log = logging.getLogger(__name__)
MAX_BLOCK_S = 5.0  # how long a request waits for room in the producer's queue, or for metadata at start
QUEUE_KBYTES = 64 * 1024  # records queued or in flight, all requests together, before produce waits


class KafkaUnavailable(IngestError):
    """Some record of a request was not acknowledged by Kafka."""


class _Acks:
    """Counts down the delivery reports of one request's records (served on the producer's thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int):
        self.loop = loop
        self.remaining = expected
        self.error: BaseException | None = None
        self.done = loop.create_future()
        self.lock = threading.Lock()

    def on_delivery(self, error: KafkaError | None, _message) -> None:
        self.count(KafkaException(error) if error is not None else None)

    def count(self, error: BaseException | None, records: int = 1) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= records
            finished = self.remaining == 0
        if finished:
            try:
                self.loop.call_soon_threadsafe(self._finish)
            except RuntimeError:  # the request's loop is gone (a shutdown): nobody waits any more
                pass

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.error)


class EventProducer:
    """The collector's producer. It is replaced when it has acknowledged nothing for two delivery
    timeouts while requests kept coming, or at once after a fatal error (the idempotent producer's
    sequence state lost): records of the old one fail, so their requests are answered 503 and
    retried; nothing acknowledged is lost."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.last_failure: str | None = None  # cleared by the next fully acknowledged request
        self.failing_since: float | None = None  # monotonic time of the first failure since the last ack
        self.fatal: str | None = None  # set by librdkafka's error callback: this producer cannot go on
        self.renewals = 0
        self.producer = self._new_producer()
        self._closing = threading.Event()
        self._reports = threading.Thread(target=self._serve_delivery_reports, name="spoor-kafka-acks", daemon=True)
        self._reports.start()

    def _new_producer(self) -> Producer:
        settings = self.settings
        return Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": "spoor-collector",
            "acks": "all",
            "enable.idempotence": True,  # librdkafka's retries neither duplicate nor reorder a partition's records
            "linger.ms": 5,
            "batch.size": 512 * 1024,
            "message.max.bytes": 4 * 1024 * 1024,
            "queue.buffering.max.kbytes": QUEUE_KBYTES,
            "message.timeout.ms": settings.kafka_delivery_timeout_ms,
            "request.timeout.ms": min(10_000, settings.kafka_delivery_timeout_ms - 1000),
            "partitioner": "murmur2_random",  # the Java client's, for a record with a key and no partition
            "allow.auto.create.topics": False,
            "reconnect.backoff.max.ms": 2000,
            "error_cb": self._on_error,
            "logger": logging.getLogger("spoor.ingest.librdkafka"),
        })

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = str(error)
            log.error("Kafka producer error, fatal: %s", error)
        else:  # transient (a broker down, a timeout): librdkafka retries; requests say so if it lasts
            log.debug("Kafka producer error: %s", error)

    def _serve_delivery_reports(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.2)  # waits without the GIL; returns as soon as reports were served

    def partitions(self, topic: str) -> int:
        """Partition count of a topic (waits up to MAX_BLOCK_S for metadata)."""
        try:
            metadata = self.producer.list_topics(topic, timeout=MAX_BLOCK_S)
        except KafkaException as err:
            raise KafkaUnavailable(f"no metadata for topic {topic}: {err}") from err
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise KafkaUnavailable(f"topic {topic} does not exist: run `spoor topics create`")
        return len(described.partitions)

    async def send_all(self, records: list[tuple[str, int | None, bytes | None, bytes]]) -> None:
        """Produce (topic, partition, key, value) records; raise KafkaUnavailable unless all were acked."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        if self.fatal is not None:
            self._renew(f"fatal error: {self.fatal}")
        acks = _Acks(loop, len(records))
        try:
            for index, record in enumerate(records):
                try:
                    await self._produce(record, acks)
                except Exception as err:  # not queued: the records not queued yet fail with it
                    acks.count(err, len(records) - index)
                    break
            error = await asyncio.wait_for(acks.done, self.settings.kafka_delivery_timeout_ms / 1000 + 5)
        except Exception as err:  # any producer failure means "not durable": the client must retry
            error = err
        if error is not None:
            self.last_failure = str(error) or type(error).__name__
            self._renew_if_stuck()
            raise KafkaUnavailable(self.last_failure)
        self.last_failure = None
        self.failing_since = None

    async def _produce(self, record: tuple[str, int | None, bytes | None, bytes], acks: _Acks) -> None:
        topic, partition, key, value = record
        deadline = None
        while True:
            try:
                self.producer.produce(topic, value, key, -1 if partition is None else partition,
                                      on_delivery=acks.on_delivery)
                return
            except BufferError:  # the queue is full: wait for deliveries to make room, up to MAX_BLOCK_S
                now = time.monotonic()
                deadline = deadline or now + MAX_BLOCK_S
                if now > deadline:
                    raise
                await asyncio.sleep(0.005)

    def _renew_if_stuck(self) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > 2 * self.settings.kafka_delivery_timeout_ms / 1000:
            self.failing_since = now
            self._renew(f"nothing acknowledged for {2 * self.settings.kafka_delivery_timeout_ms / 1000:.0f} s")

    def _renew(self, reason: str) -> None:
        """Replace the producer (on the event loop, between two requests' records)."""
        old, self.producer = self.producer, self._new_producer()
        self.fatal = None
        self.renewals += 1
        log.warning("Kafka producer replaced (%s; %d so far)", reason, self.renewals)
        old.purge()  # its records fail: their requests are answered 503 and retried
        old.flush(0)  # serves the purged records' delivery reports

    def close(self) -> None:
        self._closing.set()
        self._reports.join()
        self.producer.flush(self.settings.kafka_delivery_timeout_ms / 1000)
