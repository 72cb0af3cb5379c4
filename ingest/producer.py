"""Kafka producer for the collector: returns only when the broker acked every record.

kafka-python's producer sends from its own thread; this class bridges its
futures to asyncio so a request can await "all my records are durable".
"""

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaProducer

from spoor.ingest import IngestError
from spoor.settings import Settings

log = logging.getLogger(__name__)


class KafkaUnavailable(IngestError):
    """Some record of a request was not acknowledged by Kafka."""


class _Acks:
    """Counts down acknowledgements of one request's records, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int):
        self.loop = loop
        self.remaining = expected
        self.error: BaseException | None = None
        self.done = loop.create_future()
        self.lock = threading.Lock()

    def on_success(self, _metadata) -> None:
        self._count_one(None)

    def on_error(self, error: BaseException) -> None:
        self._count_one(error)

    def _count_one(self, error: BaseException | None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.error)


class EventProducer:
    """A producer that is replaced when it has acknowledged nothing for two delivery timeouts while
    requests kept coming: kafka-python's client can stay disconnected after a broker restart (the
    fault suite's broker kill: 503s for good until the collector restarted). Records of the old one
    fail, so their requests are answered 503 and retried; nothing acknowledged is lost."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = self._new_producer()
        # One thread: records enter the producer in request order, so a user's
        # events keep their order across requests.
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spoor-send")
        self.last_failure: str | None = None  # cleared by the next fully acknowledged request
        self.failing_since: float | None = None  # monotonic time of the first failure since the last ack
        self.renewals = 0

    def _new_producer(self) -> KafkaProducer:
        settings = self.settings
        return KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            client_id="spoor-collector",
            acks="all",
            # Off: kafka-python 3.0's idempotent producer stops sending for good once a batch expired
            # across a broker restart (no producer id, nothing in flight; seen in the fault suite,
            # tests/faults/test_kafka_restart.py: 503s until the collector restarted). A record a
            # retry writes twice is counted once by the worker (event ids; dedupe window >= a request).
            enable_idempotence=False,
            linger_ms=5,
            batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            max_block_ms=5000,
            request_timeout_ms=min(10_000, settings.kafka_delivery_timeout_ms - 1000),
            delivery_timeout_ms=settings.kafka_delivery_timeout_ms,
            allow_auto_create_topics=False,
            reconnect_backoff_max_ms=2000,  # the default 30 s kept a restarted broker unused for that long
        )

    def partitions(self, topic: str) -> int:
        """Partition count of a topic (blocks up to max_block_ms for metadata)."""
        partitions = self.producer.partitions_for(topic)
        if not partitions:
            raise KafkaUnavailable(f"topic {topic} does not exist: run `spoor topics create`")
        return len(partitions)

    async def send_all(self, records: list[tuple[str, int | None, bytes | None, bytes]]) -> None:
        """Produce (topic, partition, key, value) records; raise KafkaUnavailable unless all were acked."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        acks = _Acks(loop, len(records))
        try:
            await loop.run_in_executor(self.sender, self._enqueue, records, acks)
            error = await asyncio.wait_for(acks.done, self.settings.kafka_delivery_timeout_ms / 1000 + 5)
        except Exception as err:  # any producer failure means "not durable": the client must retry
            error = err
        if error is not None:
            self.last_failure = str(error) or type(error).__name__
            await self._renew_if_stuck(loop)
            raise KafkaUnavailable(self.last_failure)
        self.last_failure = None
        self.failing_since = None

    async def _renew_if_stuck(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > 2 * self.settings.kafka_delivery_timeout_ms / 1000:
            self.failing_since = now
            await loop.run_in_executor(self.sender, self._renew)  # between two requests' records

    def _renew(self) -> None:
        old, self.producer = self.producer, self._new_producer()
        self.renewals += 1
        log.warning("Kafka acknowledged nothing for %.0f s: producer replaced (%d so far)",
                    2 * self.settings.kafka_delivery_timeout_ms / 1000, self.renewals)
        old.close(timeout=0)  # its records fail: their requests are answered 503 and retried

    def _enqueue(self, records, acks: _Acks) -> None:
        for index, (topic, partition, key, value) in enumerate(records):
            try:
                future = self.producer.send(topic, value=value, key=key, partition=partition)
            except Exception as err:
                for _ in range(len(records) - index):
                    acks.on_error(err)
                return
            future.add_callback(acks.on_success)
            future.add_errback(acks.on_error)

    def close(self) -> None:
        self.sender.shutdown(wait=True)
        self.producer.flush(timeout=self.settings.kafka_delivery_timeout_ms / 1000)
        self.producer.close()
