"""A Faust app whose Kafka consumer waits at most ``fetch_max_wait_ms`` for a fetch.

Faust's aiokafka driver fixes ``fetch_max_wait_ms`` at 1500. aiokafka keeps one fetch in flight per
broker and leaves a partition out of the next fetch while it still holds fetched records. So just
after the events partitions' records arrive, the next fetch can hold only a quiet partition (the
dead-letter topic's), which the broker parks for the whole wait: the events partitions are not
fetched again for up to 1.5 s (seen as 0.6-1.0 s idle gaps between a worker's batches under load).
"""

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms  # read when start() builds the fetcher
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class FetchWaitApp(faust.App):
    def __init__(self, *args, fetch_max_wait_ms: int, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)
