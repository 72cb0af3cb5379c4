"""The Faust app: agents and tables, assembled from settings.

Agents are thin shells: ``ProfileTracker`` does the work for events, and the
dead-letter agent copies bad rows into PostgreSQL so people can query them.
"""

import asyncio
import logging
import time
from functools import partial

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import create_engine

from spoor.bad_rows import bad_row, dead_letter_row
from spoor.settings import Settings
from spoor.storage import consent_store
from spoor.storage.writers import StreamWriter
from spoor.stream_processors import worker_metrics
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.behaviour import AnalyticsRules
from spoor.stream_processors.behaviour_triggers import TriggerRules, trigger_message
from spoor.stream_processors.blocking import fail_stop, fail_stop_on_error, run_blocking
from spoor.stream_processors.consent_gate import ConsentGate, ConsentReads
from spoor.stream_processors.continuity import OffsetContinuity
from spoor.stream_processors.durable_table import DurableTable
from spoor.stream_processors.faust_internals import committed_offset, track_batches
from spoor.stream_processors.gc_control import collection_deferred
from spoor.stream_processors.identities import IdentityGraph
from spoor.stream_processors.interests import DAY_S, interest_batch
from spoor.stream_processors.kafka_transport import FetchWaitApp
from spoor.stream_processors.metric_agent import register_metric_windows
from spoor.stream_processors.profile_tracker import ProfileTracker
from spoor.stream_processors.stall import StallWatch
from spoor.topics import partition_for

log = logging.getLogger(__name__)

# RocksDB through rocksdict, sized for a small shared machine (Faust's defaults: 3 x 64 MiB write
# buffers per partition and a 2 GiB block cache).
ROCKSDB_OPTIONS = {"driver": "rocksdict", "write_buffer_size": 16 * 2**20, "max_write_buffer_number": 2,
                   "block_cache_size": 64 * 2**20}


def analytics_rules(settings: Settings) -> AnalyticsRules:
    return AnalyticsRules(
        session_inactivity_s=settings.session_inactivity_s, session_lateness_s=settings.session_lateness_s,
        trigger_lateness_s=settings.trigger_lateness_s, order_dedupe=settings.dedupe_window,
        triggers=TriggerRules(cart_delay_s=settings.cart_abandonment_delay_s,
                              browse_views=settings.browse_abandonment_views,
                              browse_delay_s=settings.browse_abandonment_delay_s,
                              win_back_s=settings.win_back_after_days * 86400))


def create_analytics(settings: Settings, app: faust.App) -> AnalyticsTracker:
    """Sessions, windows and triggers; trigger messages go to ``settings.triggers_topic``."""
    triggers_topic = app.topic(settings.triggers_topic, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")

    async def send_triggers(triggers: list[dict]) -> None:
        sent = [await triggers_topic.send(key=t["user_key"].encode(), value=trigger_message(t)) for t in triggers]
        for delivered in sent:
            await delivered  # acked by Kafka before the batch is acked

    return AnalyticsTracker(analytics_rules(settings), settings.topic_partitions, send_triggers,
                            idle_advance_s=settings.trigger_idle_advance_s)


def create_consent_gate(settings: Settings, engine) -> ConsentGate:
    reads = ConsentReads(withdrawn=partial(consent_store.read_withdrawn, engine),
                         changed=partial(consent_store.read_changed, engine),
                         users=partial(consent_store.read_users, engine),
                         record=partial(consent_store.record_page_statements, engine))
    return ConsentGate(reads, max_users=settings.consent_book_max_users, refresh_s=settings.consent_refresh_s)


def create_app(settings: Settings) -> faust.App:
    app = FetchWaitApp(
        settings.worker_app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        store=settings.worker_store,
        datadir=settings.worker_data_dir,
        topic_partitions=settings.topic_partitions,
        key_serializer="raw",
        value_serializer="raw",
        topic_disable_leader=True,
        table_standby_replicas=settings.worker_standby_replicas,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=settings.worker_batch_max * 4,
        producer_acks=-1,
        producer_linger=settings.worker_producer_linger_ms / 1000,
        producer_max_batch_size=settings.worker_producer_batch_bytes,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        web_bind=settings.worker_web_host,
        web_port=settings.worker_web_port,
        fetch_max_wait_ms=settings.worker_fetch_max_wait_ms,
        fetch_min_bytes=settings.worker_fetch_min_bytes,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(settings.events_topic, **raw)
    dead_letter_topic = app.topic(settings.dead_letter_topic, **raw)
    # Keys are raw bytes and the default partitioner places them, so a user's
    # changelog records land on the same partition number as the user's events.
    profiles = app.tables.add(DurableTable(
        app, name="user-profiles", default=None, beacon=app.tables.beacon, partitions=settings.topic_partitions,
        use_partitioner=True, key_type=bytes, value_type=bytes,  # bytes -> "raw" codec
        options=ROCKSDB_OPTIONS if settings.worker_store.startswith("rocksdb") else None))

    # Who is who (identities.py): keyed by id, so an id's entry is on the partition of its events.
    identity_table = app.tables.add(DurableTable(
        app, name="identities", default=None, beacon=app.tables.beacon, partitions=settings.topic_partitions,
        use_partitioner=True, key_type=bytes, value_type=bytes,
        options=ROCKSDB_OPTIONS if settings.worker_store.startswith("rocksdb") else None))
    identities = IdentityGraph(identity_table, settings.identity_max_ids_per_user, settings.identity_denylist)

    async def send_record(key: str, value: bytes):
        """A record on the events topic, on the key's partition; returns its delivery (awaited by the tracker)."""
        return await events_topic.send(key=key.encode(), value=value,
                                       partition=partition_for(key, settings.topic_partitions))

    engine = create_engine(settings.database_url, pool_size=2, pool_pre_ping=True)
    writer = StreamWriter(engine)

    async def send_bad_row(payload, field: str, reason: str, failure_type: str):
        """The send's delivery: the tracker awaits it (acked by the broker) before the batch is acked."""
        return await dead_letter_topic.send(value=bad_row("worker", field, reason, payload,
                                                          failure_type=failure_type))

    analytics = create_analytics(settings, app) if settings.analytics_enabled else None
    tracker = ProfileTracker(profiles, writer, settings.dedupe_window, send_bad_row, analytics,
                             max_future_s=settings.max_future_event_s, max_state_bytes=settings.worker_max_state_bytes,
                             max_processing_errors_in_a_row=settings.worker_max_consecutive_processing_errors,
                             identities=identities, send_record=send_record,
                             interests=partial(interest_batch, half_life_s=settings.interest_half_life_days * DAY_S,
                                               trend_half_life_s=settings.trending_half_life_days * DAY_S),
                             consent=create_consent_gate(settings, engine))

    # Faust acks a take() batch even when the agent body raises, and acked offsets
    # get committed. So a batch that cannot be persisted must stop the process
    # before that happens (fail_stop); the restarted worker gets it again.
    continuity = OffsetContinuity()

    stall_watch = StallWatch(after_s=settings.worker_stall_restart_s)

    @app.on_partitions_revoked.connect
    async def forget_positions_on_revoke(_app, revoked, **_kwargs):
        continuity.reset()
        stall_watch.reset()
        if analytics:
            analytics.reset()

    @app.on_partitions_assigned.connect
    async def forget_positions_on_assign(_app, assigned, **_kwargs):
        continuity.reset()
        stall_watch.reset()
        if analytics:
            analytics.reset()

    async def expected_start(tp) -> int | None:
        """Where a partition's records should begin: the committed offset, else the log start."""
        committed = committed_offset(app, tp)
        if committed is None and tp not in continuity.next_offset:
            committed = (await app.consumer.earliest_offsets(tp)).get(tp)
        return committed

    async def without_holes(batch) -> list:
        """The batch, after checking the consumer left no hole in it (else fail-stop; see continuity.py)."""
        holes = {}
        for event in batch:
            tp = event.message.tp
            missing = continuity.admit(tp, event.message.offset, await expected_start(tp))
            if missing is not None:
                holes.setdefault(tp, missing)
        if holes:
            # Faust's own seek re-creates the hole (prefetched records move its read offset on), so
            # stop before this batch is acked: a restarted worker reads from the last commit.
            worker_metrics.SKIPPED_RECORD_REPAIRS.inc(len(holes))
            fail_stop(f"the consumer skipped records at {holes}; restarting to read them again")
        return batch

    fold_metric_windows = register_metric_windows(app, settings, dead_letter_topic, engine)
    one_at_a_time = asyncio.Lock()  # the agent's batches and the idle-trigger timer share user state

    @app.agent(events_topic, name="track-profiles")
    async def track_profiles(stream):
        async for batch in track_batches(stream, settings.worker_batch_max, settings.worker_batch_within_s):
            async with one_at_a_time:
                with collection_deferred():  # gc_control.py: no full collection over a live batch
                    batch = await without_holes(batch)
                    first_seen = await fail_stop_on_error(
                        tracker.process([(e.message.partition, e.value, e.message.timestamp) for e in batch]),
                        "tracking profiles")
                    await fold_metric_windows(batch, first_seen)

    if analytics and settings.trigger_idle_advance_s > 0:
        @app.timer(interval=min(10.0, settings.trigger_idle_advance_s))
        async def fire_idle_triggers():
            async with one_at_a_time:
                await fail_stop_on_error(tracker.fire_idle(), "firing triggers on idle partitions")

    @app.agent(dead_letter_topic, name="store-dead-letters")
    async def store_dead_letters(stream):
        async for batch in track_batches(stream, 500, 1.0):
            rows = [dead_letter_row(f"{e.message.topic}/{e.message.partition}/{e.message.offset}", e.value)
                    for e in await without_holes(batch)]
            await fail_stop_on_error(run_blocking(writer.write_dead_letters, rows), "storing dead letters")
            worker_metrics.DEAD_LETTERS.inc(len(rows))

    if settings.worker_stall_restart_s > 0:
        @app.timer(interval=min(10.0, settings.worker_stall_restart_s / 3))
        async def restart_when_stalled():
            """See stall.py: a partition with records to read whose commit does not move for too long."""
            if not app.tables.recovery.completed.is_set():
                stall_watch.reset()  # restoring tables: the streams wait on purpose
                return
            tps = [tp for tp in app.consumer.assignment()
                   if tp.topic in (settings.events_topic, settings.dead_letter_topic)]
            if not tps:
                return
            ends = await app.consumer.highwaters(*tps)
            stalled = stall_watch.check(time.monotonic(), {
                tp: (committed_offset(app, tp), ends.get(tp)) for tp in tps})
            if stalled:
                fail_stop(f"no progress for {settings.worker_stall_restart_s:.0f}s on {stalled} with records "
                          "waiting (faust-streaming issue 629); restarting to read them with a new consumer")

    @app.page("/metrics")
    async def prometheus(web, request):
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web, request):
        if not app.tables.recovery.completed.is_set():  # streams wait until tables are restored
            return web.json({"status": "recovering table state from the changelog"}, status=503)
        return web.json({"status": "ok"})

    return app
