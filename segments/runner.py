"""The two long-running processes: ``spoor segments run`` and ``spoor campaigns run``.

Each is one loop that does a bounded amount of work per turn and stops cleanly on SIGTERM/SIGINT
(the current turn finishes; nothing half-done is committed).
"""

import logging
import signal
import threading
import time

from sqlalchemy import Engine

from segments import membership
from segments.campaigns import dispatch_due, enqueue
from segments.delivery import Sender
from segments.kafka import create_producer, create_segment_topics
from segments.membership import SegmentStore, utcnow
from spoor.settings import Settings

log = logging.getLogger(__name__)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_segments(settings: Settings, engine: Engine, stop: threading.Event | None = None) -> None:
    """Incremental pass every ``segments_poll_s``, a full recompute every ``segments_full_recompute_s``,
    and publication of enter/exit records to ``segments_topic``."""
    stop = stop or _stop_event()
    create_segment_topics(settings)
    producer = create_producer(settings, "spoor-segments")
    SegmentStore(engine).install_builtins()
    last_full = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() - last_full >= settings.segments_full_recompute_s:
                changes = membership.full_recompute(engine, utcnow())
                last_full = time.monotonic()
                log.info("full recompute: %s", changes)
            result = membership.incremental_pass(engine, utcnow(), settings.segments_change_overlap_s)
            published = membership.publish_transitions(engine, producer, settings.segments_topic)
            if result["changed_users"] or published:
                log.info("incremental pass: %d changed users, %d transitions published",
                         result["changed_users"], published)
            stop.wait(settings.segments_poll_s)
    finally:
        producer.close()


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
    try:
        while not stop.is_set():
            ingest.poll_once(int(settings.campaigns_poll_s * 1000))
            now = utcnow()
            enqueue(engine, now)
            counts = dispatch_due(engine, sender, now, settings.campaign_default_time_zone,
                                  settings.campaigns_dead_letter_topic)
            if counts:
                log.info("dispatched: %s", counts)
    finally:
        consumer.close()
        producer.close()
