"""The long-running process ``spoor campaigns run``: ingest triggers from Kafka, enqueue new audience
episodes, dispatch due deliveries, in the bounded turns of ``spoor.turn_loop``."""

import logging
import threading
from datetime import timedelta

from kafka import KafkaConsumer
from sqlalchemy import Engine

from spoor.campaigns import campaign_metrics
from spoor.campaigns.campaign_dispatch import dispatch_due, enqueue, record_counterfactuals
from spoor.campaigns.trigger_intake import TriggerIngest
from spoor.campaigns.webhook_delivery import Sender
from spoor.segments.membership import utcnow
from spoor.settings import Settings
from spoor.topics import create_producer, create_segment_topics
from spoor.turn_loop import run_turns, stop_event

log = logging.getLogger(__name__)


def run_campaigns(settings: Settings, engine: Engine, stop: threading.Event | None = None) -> None:
    """Ingest triggers from Kafka, enqueue new audience episodes, dispatch due deliveries."""
    stop = stop or stop_event()
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
        kept_since = now - timedelta(days=settings.retention_deliveries_days)  # older: maybe dropped, not again
        campaign_metrics.ENQUEUED.inc(enqueue(engine, now, kept_since=kept_since))
        counts = dispatch_due(engine, sender, now, settings.campaign_default_time_zone,
                              settings.campaigns_dead_letter_topic)
        for outcome, n in counts.items():
            campaign_metrics.DELIVERIES.labels(outcome).inc(n)
        for outcome, n in record_counterfactuals(engine, now, settings.campaign_default_time_zone).items():
            campaign_metrics.COUNTERFACTUALS.labels(outcome).inc(n)
        if counts:
            log.info("dispatched: %s", counts)

    try:
        # The consumer poll already waits up to campaigns_poll_s, so turns follow each other directly.
        run_turns("campaigns", turn, 0.01, stop, settings.admin_api_host, settings.campaigns_web_port)
    finally:
        consumer.close()
        producer.close()
