"""Every reach into faust-streaming's or aiokafka's private parts, in one module.

The worker needs a few things Faust and aiokafka offer only under underscore names: the offset Faust
last committed for a partition, the fetch wait of the Kafka consumer Faust builds, the store a table
builds for its URL, which partition's database Faust's RocksDB store keeps a key in, and batches taken
from a stream without waking while nothing arrives (``take_batches``, a copy of ``take_events``). Each is a
small named function or class here, with a comment naming the versions it was checked against and
why no public API serves; the aiokafka producer behind Faust's is reached the same way, for its public
batch API. tests/unit/test_faust_internals.py checks every private name this module relies on
against the installed packages (an upgrade that drops one fails a unit test, not a worker), and that
no other file in stream_processors/ reaches one.

Checked against faust-streaming 0.15.1 and 0.15.2 (their sources) and 0.15.3 (installed;
pyproject.toml pins >=0.15.1,<0.16), and aiokafka 0.10.0-0.14.0 (faust-streaming needs >=0.10.0).

Overrides. Some of Faust's extension points are private methods (``App._new_transport``,
``Table._new_store_by_url``, a store's ``_get``/``_set``/``_del``/``_contains``). The subclasses
that override them live here, as small bases that turn each private hook into a public one
(``ConsumerHookApp.worker_consumer_built``, ``StoreChoosingTable.store_for_url``,
``PlacedRocksDBStore.partition_for_key``); kafka_transport.py, durable_table.py and rocksdb_store.py
subclass those and keep their reasons and rules. Chosen over leaving each override where it was with
its ``super()._x()`` call wrapped, because: the override, the private attributes it touches and its
version note sit together; the project's own Faust subclasses then carry no underscore name at all
(a private name of ours on a Faust subclass could also clash with one a later Faust adds); and "no
underscore name on a Faust or aiokafka object outside faust_internals.py" is a rule a test can check.

Behaviour relied on without reaching it (nothing here calls it; re-read it on an upgrade):
- ``Consumer._drain_messages`` moves its read offset past a record whose delivery was abandoned
  (continuity.py detects the hole; the test checks the method is still there);
- partitions assigned in a rebalance may never be fetched again, faust-streaming issue 629 (stall.py);
- ``ProducerBuffer.flush_atmost`` gives up after 0.1 s before a commit (durable_table.py);
- Faust's RocksDB store writes a key into the current event's partition (rocksdb_store.py).
"""

import asyncio
from collections.abc import AsyncIterator

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.stores import rocksdb
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, StoreT
from mode.utils.futures import notify


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """The offset Faust last committed for ``tp`` (or found committed when it was assigned); None if none."""
    # faust-streaming 0.15.1-0.15.3: Consumer._committed_offset; no public getter (aiokafka's committed() asks a broker)
    return app.consumer._committed_offset.get(tp)


def kafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer behind the app's Faust producer (raises Faust's NotReady before it starts)."""
    # faust-streaming 0.15.1-0.15.3: Producer._ensure_producer; Faust's producer offers a record at a time (send),
    # not aiokafka's public create_batch/send_batch
    return app.producer._ensure_producer()


def set_fetch_limits(consumer: AIOKafkaConsumer, ms: int, min_bytes: int) -> None:
    """Make a built, not yet started, aiokafka consumer wait at most ``ms`` for a fetch to hold ``min_bytes``."""
    # aiokafka 0.10.0-0.14.0: start() reads _fetch_max_wait_ms and _fetch_min_bytes; Faust 0.15.1-0.15.3 passes
    # the public fetch_max_wait_ms as 1500 and leaves fetch_min_bytes at aiokafka's 1
    consumer._fetch_max_wait_ms = ms
    consumer._fetch_min_bytes = min_bytes


class _HookConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    # faust-streaming 0.15.1-0.15.3: where the worker's aiokafka consumer is built, from fixed arguments, with no hook
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        self.app.worker_consumer_built(consumer)
        return consumer


class _HookConsumer(faust_aiokafka.Consumer):
    # faust-streaming 0.15.1-0.15.3: the only place the consumer picks its thread class; no setting or public hook
    def _new_consumer_thread(self):
        return _HookConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _HookTransport(faust_aiokafka.Transport):
    Consumer = _HookConsumer  # public class attribute: the transport's consumer class


class ConsumerHookApp(faust.App):
    """A Faust app (Kafka through aiokafka) that hands each worker consumer it builds, before it starts,
    to ``worker_consumer_built``."""

    def worker_consumer_built(self, consumer: AIOKafkaConsumer) -> None:
        """Override to adjust the consumer: it is built, not started."""

    # faust-streaming 0.15.1-0.15.3: picks the transport; the public way (faust.transport's scheme registry) is global
    def _new_transport(self):
        return _HookTransport(self.conf.broker_consumer, self)


class StoreChoosingTable(faust.Table):
    """A Faust table that may build its own store for its store URL (``store_for_url``), else Faust's."""

    def store_for_url(self, url) -> StoreT | None:
        """Override to return a store for ``url``; None: Faust's own."""
        return None

    # faust-streaming 0.15.1-0.15.3: builds the table's store; the public way (faust.stores' scheme registry) is global
    def _new_store_by_url(self, url):
        store = self.store_for_url(url)  # not ``or``: a store's truth is its length
        return super()._new_store_by_url(url) if store is None else store


class PlacedRocksDBStore(rocksdb.Store):
    """Faust's RocksDB store with every key kept in, and looked up in, the database of the partition
    ``partition_for_key`` names (Faust's own uses the current event's partition)."""

    def partition_for_key(self, key: bytes) -> int:
        raise NotImplementedError

    # faust-streaming 0.15.1-0.15.3: SerializedStore's abstract _set is how a store is written (no public hook)
    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self.partition_for_key(key)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    # faust-streaming 0.15.1-0.15.3: abstract _get, as _set; _dbs (partition -> open database) is not exposed either
    def _get(self, key: bytes) -> bytes | None:
        db = self._dbs.get(self.partition_for_key(key))
        return None if db is None else db.get(key)

    # faust-streaming 0.15.1-0.15.3: abstract _del, as _set; _dbs as in _get; _key_index (key -> partition, an LRU
    # cache Faust fills on writes) would keep a deleted key in memory until it is pushed out
    def _del(self, key: bytes) -> None:
        self._key_index.pop(key, None)
        db = self._dbs.get(self.partition_for_key(key))
        if db is not None:
            db.delete(key)

    def databases_holding(self, keys) -> list:
        """The open databases (rocksdict ``Rdict``) of the partitions ``keys`` are kept in, each once."""
        # faust-streaming 0.15.1-0.15.3: _dbs as in _get (a revoked partition's database is not in it)
        return self.open_databases({self.partition_for_key(key) for key in keys})

    def open_databases(self, partitions) -> list:
        """The open databases of ``partitions``, in partition order (a revoked partition's is not open)."""
        # faust-streaming 0.15.1-0.15.3: _dbs as in _get
        return [self._dbs[p] for p in sorted(partitions) if p in self._dbs]

    # faust-streaming 0.15.1-0.15.3: abstract _contains, as _set
    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None


async def take_batches(stream: faust.Stream, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    """Faust's ``Stream.take_events(max_, within)`` except that an empty buffer waits for its first event
    without a timeout: a batch is yielded at most ``within`` after its first event or once it holds ``max_``.
    Faust's own wakes every ``within`` whether or not anything arrived (with the worker's 0.02 s, 50 times a
    second per worker: 33 of the two idle workers' 59 ms of CPU a second). Events are acked after the caller
    is done with their batch, as Faust's are."""
    # faust-streaming 0.15.1-0.15.3: take_events' own body, which uses the stream's _enable_passive (consume the
    # channel in the background through the processors), _processors (to remove its own) and _active_agens
    # (where Stream.on_stop closes generators left open); none has a public counterpart
    buffer: list[EventT] = []
    started, full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consuming: asyncio.Future | None = None
    acks_were_enabled = stream.enable_acks

    async def add_to_buffer(value):
        nonlocal consuming
        try:
            if consuming is not None:
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found no current event")
            buffer.append(event)
            started.set()
            if len(buffer) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)  # never more than max_ events in a batch
        except Exception as exc:  # not CancelledError, a BaseException
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked below, once the batch is done with
    stream.add_processor(add_to_buffer)
    stream._enable_passive(stream.channel.__aiter__())
    try:
        while not stream.should_stop:
            if not buffer:
                await stream.wait_for_stopped(started)
            await stream.wait_for_stopped(full, timeout=within)
            if buffer:
                consuming = stream.loop.create_future()  # add_to_buffer waits on it: the buffer holds still
                try:
                    yield list(buffer)  # the caller's own list: the acks below do not depend on what it does
                finally:
                    for event in buffer:
                        await stream.ack(event)
                    buffer.clear()
                    started.clear()
                    notify(consuming)
                    full.clear()
                    consumed.set()
    finally:
        stream.enable_acks = acks_were_enabled
        stream._processors.remove(add_to_buffer)


def track_batches(stream: faust.Stream, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    """``take_batches``, registered as Faust registers its own take generators: a generator left open when the
    stream stops is closed by the stream (``Stream.on_stop``)."""
    batches = take_batches(stream, max_, within)
    # faust-streaming 0.15.1-0.15.3: _tracks_buffer_agen adds take()'s generators to _active_agens
    stream._active_agens.add(batches)
    return batches
