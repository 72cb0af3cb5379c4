"""Kafka producer for the collector: returns only when the broker acked every record.

kafka-python's producer sends from its own thread; this class bridges its
futures to asyncio so a request can await "all my records are durable".
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaProducer

from spoor.settings import Settings


class KafkaUnavailable(RuntimeError):
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
    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            client_id="spoor-collector",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            max_block_ms=5000,
            request_timeout_ms=min(10_000, settings.kafka_delivery_timeout_ms - 1000),
            delivery_timeout_ms=settings.kafka_delivery_timeout_ms,
            allow_auto_create_topics=False,
        )
        # One thread: records enter the producer in request order, so a user's
        # events keep their order across requests.
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spoor-send")

    async def send_all(self, records: list[tuple[str, bytes, bytes]]) -> None:
        """Produce (topic, key, value) records; raise KafkaUnavailable unless all were acked."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        acks = _Acks(loop, len(records))
        try:
            await loop.run_in_executor(self.sender, self._enqueue, records, acks)
            error = await asyncio.wait_for(acks.done, self.settings.kafka_delivery_timeout_ms / 1000 + 5)
        except Exception as err:  # any producer failure means "not durable": the client must retry
            raise KafkaUnavailable(str(err) or type(err).__name__) from err
        if error is not None:
            raise KafkaUnavailable(str(error) or type(error).__name__)

    def _enqueue(self, records, acks: _Acks) -> None:
        for index, (topic, key, value) in enumerate(records):
            try:
                future = self.producer.send(topic, value=value, key=key)
            except Exception as err:
                for _ in range(len(records) - index):
                    acks.on_error(err)
                return
            future.add_callback(acks.on_success)
            future.add_errback(acks.on_error)

    def connected(self) -> bool:
        return self.producer.bootstrap_connected()

    def close(self) -> None:
        self.sender.shutdown(wait=True)
        self.producer.flush(timeout=self.settings.kafka_delivery_timeout_ms / 1000)
        self.producer.close()
