"""A Faust app whose Kafka consumer waits at most ``fetch_max_wait_ms`` for a fetch to hold ``fetch_min_bytes``.

Faust's aiokafka driver fixes ``fetch_max_wait_ms`` at 1500. aiokafka keeps one fetch in flight per
broker and leaves a partition out of the next fetch while it still holds fetched records. So just
after the events partitions' records arrive, the next fetch can hold only a quiet partition (the
dead-letter topic's), which the broker parks for the whole wait: the events partitions are not
fetched again for up to 1.5 s (seen as 0.6-1.0 s idle gaps between a worker's batches under load).
The minimum is aiokafka's 1 byte unless set: larger fetches cut the worker's and Kafka's CPU only when
the worker keeps up with a flood (bench/README.md, "Bigger fetches"). The consumer is reached through
faust_internals.py (Faust builds it privately).
"""

from aiokafka import AIOKafkaConsumer

from spoor.stream_processors.faust_internals import ConsumerHookApp, set_fetch_limits


class FetchWaitApp(ConsumerHookApp):
    def __init__(self, *args, fetch_max_wait_ms: int, fetch_min_bytes: int, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        super().__init__(*args, **kwargs)

    def worker_consumer_built(self, consumer: AIOKafkaConsumer) -> None:
        # read when start() builds the fetcher
        set_fetch_limits(consumer, self.fetch_max_wait_ms, self.fetch_min_bytes)
