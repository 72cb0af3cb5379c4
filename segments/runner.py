"""The two long-running processes: ``spoor segments run`` and ``spoor campaigns run``.

Each is one loop of bounded turns. A turn that fails on PostgreSQL or Kafka is retried after a pause
(doubling up to 30 s): every step is idempotent, and trigger offsets are committed only after the
rows are stored, so a retried turn repeats nothing visible. A segment that fails because of itself
(its definition, or its own statement) does not fail the turn: it is recorded in ``segments.error``,
counted (``spoor_segments_refresh_failures_total``), logged when its reason changes, and the other
segments go on (``membership``). SIGTERM/SIGINT end the loop after the current turn. ``/healthz``
answers 503 when no turn has completed for a while; ``/metrics`` is Prometheus.
"""

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable

from kafka.errors import KafkaError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from segments import membership, metrics
from segments.campaigns import dispatch_due, enqueue
from segments.delivery import Sender
from segments.kafka import create_producer, create_segment_topics
from segments.membership import SegmentStore, utcnow
from segments.ops import serve_ops
from spoor.settings import Settings

log = logging.getLogger(__name__)
MAX_PAUSE_S = 30.0
TRANSIENT = (SQLAlchemyError, KafkaError, OSError)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


class Heartbeat:
    """When the runner last finished a step: a turn, or a paced statement within a long one (/healthz)."""

    def __init__(self):
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()


def paced_by(busy_share: float, stop: threading.Event, heartbeat: Heartbeat) -> Callable[[float], None]:
    """After a step of ``step_s`` seconds, idle so that steps take at most ``busy_share`` of the time."""
    def pace(step_s: float) -> None:
        heartbeat.beat()
        stop.wait(step_s * (1 - busy_share) / busy_share)
    return pace


def _loop(process: str, turn: Callable[[], None], poll_s: float, stop: threading.Event, host: str,
          port: int, heartbeat: Heartbeat | None = None) -> None:
    heartbeat = heartbeat or Heartbeat()
    stalled_after = max(60.0, 10 * poll_s)
    server = serve_ops(host, port, lambda: time.monotonic() - heartbeat.at < stalled_after) if port else None
    pause = poll_s
    try:
        while not stop.is_set():
            try:
                turn()
            except TRANSIENT as err:
                metrics.TURN_FAILURES.labels(process).inc()
                pause = min(MAX_PAUSE_S, pause * 2)
                log.warning("%s turn failed (%s: %s); retrying in %.1f s", process, type(err).__name__, err, pause)
                stop.wait(pause)
                continue
            pause = poll_s
            heartbeat.beat()
            metrics.LAST_TURN.labels(process).set_to_current_time()
            stop.wait(poll_s)
    finally:
        if server:
            server.shutdown()


def run_segments(settings: Settings, engine: Engine, stop: threading.Event | None = None) -> None:
    """Incremental pass every ``segments_poll_s``, a full recompute every ``segments_full_recompute_s``,
    and publication of enter/exit records to ``segments_topic``."""
    stop = stop or _stop_event()
    create_segment_topics(settings)
    producer = create_producer(settings, "spoor-segments")
    SegmentStore(engine).install_builtins()
    last_full = [float("-inf")]
    last_population = [float("-inf")]
    # Each statement of a turn is followed by its share of idle time: PostgreSQL is loaded evenly
    # instead of a whole core in bursts while the worker needs it.
    heartbeat = Heartbeat()
    pace = paced_by(settings.segments_max_busy_share, stop, heartbeat)
    failures = SegmentFailures()

    def turn() -> None:
        if time.monotonic() - last_full[0] >= settings.segments_full_recompute_s:
            started = time.monotonic()
            failed: dict[str, str] = {}
            changes = membership.full_recompute(engine, utcnow(), pace=pace, failed=failed)
            _count(changes)
            failures.report(failed, changes, every_active=True)
            metrics.PASSES.labels("full").inc()
            log.info("full recompute in %.1f s", time.monotonic() - started)
            last_full[0] = time.monotonic()
        # RFM segments are recomputed for everyone, so at most every segments_population_refresh_s.
        population_due = time.monotonic() - last_population[0] >= settings.segments_population_refresh_s
        started = time.monotonic()
        result = membership.incremental_pass(engine, utcnow(), settings.segments_change_overlap_s,
                                             refresh_population=population_due, pace=pace)
        pass_s = time.monotonic() - started
        if population_due and result["changed_users"]:
            last_population[0] = time.monotonic()
        metrics.PASSES.labels("incremental").inc()
        metrics.CHANGED_USERS.inc(result["changed_users"])
        _count(result["segments"])
        failures.report(result["failed"], result["segments"])
        started = time.monotonic()
        published = membership.publish_backlog(engine, producer, settings.segments_topic,
                                               budget_s=settings.segments_poll_s, pace=pace)
        publish_s = time.monotonic() - started
        metrics.PUBLISHED.inc(published)
        if result["changed_users"] or published:
            log.info("incremental pass: %d changed users in %.1f s%s, %d transitions published in %.1f s",
                     result["changed_users"], pass_s, " (with RFM refresh)" if population_due else "",
                     published, publish_s)

    try:
        _loop("segments", turn, settings.segments_poll_s, stop, settings.admin_api_host, settings.segments_web_port,
              heartbeat)
    finally:
        producer.close()


class SegmentFailures:
    """Segments whose last refresh failed because of themselves: counted on every failure, logged when
    a segment starts failing, fails for another reason, or works again."""

    def __init__(self):
        self.reasons: dict[str, str] = {}

    def report(self, failed: dict[str, str], refreshed: Iterable[str], every_active: bool = False) -> None:
        """``every_active``: the pass tried every active segment (so a paused one is forgotten)."""
        if every_active:
            for name in set(self.reasons) - set(failed) - set(refreshed):
                del self.reasons[name]
        for name, reason in failed.items():
            metrics.SEGMENT_FAILURES.inc()
            if self.reasons.get(name) != reason:
                log.warning("segment %s skipped, the others go on: %s", name, reason)
            self.reasons[name] = reason
        for name in refreshed:
            if self.reasons.pop(name, None) is not None:
                log.info("segment %s refreshed again", name)
        metrics.FAILING_SEGMENTS.set(len(self.reasons))


def _count(changes: dict[str, tuple[int, int]]) -> None:
    for entered, left in changes.values():
        metrics.TRANSITIONS.labels("enter").inc(entered)
        metrics.TRANSITIONS.labels("exit").inc(left)


def run_campaigns(settings: Settings, engine: Engine, stop: threading.Event | None = None) -> None:
    """Ingest triggers from Kafka, enqueue new audience episodes, dispatch due deliveries."""
    from kafka import KafkaConsumer

    from segments.triggers import TriggerIngest

    stop = stop or _stop_event()
    create_segment_topics(settings)
    producer = create_producer(settings, "spoor-campaigns")
    consumer = KafkaConsumer(settings.triggers_topic, bootstrap_servers=settings.kafka_bootstrap.split(","),
                             group_id=f"{settings.worker_app_id}-campaign-triggers", enable_auto_commit=False,
                             auto_offset_reset="earliest", client_id="spoor-campaigns")
    ingest = TriggerIngest(engine, consumer, producer, settings.campaigns_dead_letter_topic)
    sender = Sender(settings, producer)

    def turn() -> None:
        ingest.poll_once(int(settings.campaigns_poll_s * 1000))
        now = utcnow()
        metrics.ENQUEUED.inc(enqueue(engine, now))
        counts = dispatch_due(engine, sender, now, settings.campaign_default_time_zone,
                              settings.campaigns_dead_letter_topic)
        for outcome, n in counts.items():
            metrics.DELIVERIES.labels(outcome).inc(n)
        if counts:
            log.info("dispatched: %s", counts)

    try:
        # The consumer poll already waits up to campaigns_poll_s, so turns follow each other directly.
        _loop("campaigns", turn, 0.01, stop, settings.admin_api_host, settings.campaigns_web_port)
    finally:
        consumer.close()
        producer.close()
