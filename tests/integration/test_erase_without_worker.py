"""Erasing a user while no worker runs: no wait for a worker that is not there, and the erasure
record stays on the events topic for the next worker to apply."""

import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import text

from spoor.privacy.erasure import erase_user
from spoor.topics import partition_for

pytestmark = pytest.mark.integration


def test_erasure_without_a_worker_does_not_wait_and_leaves_the_record_for_the_next_worker(test_settings, engine):
    user_key = "erase-me-while-no-worker-runs"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO user_profiles (user_key, first_seen_at, last_seen_at, events, page_views, product_views,"
            " distinct_products_viewed, clicks, cart_adds, cart_removes, cart_value, checkouts, orders, revenue)"
            " VALUES (:u, now(), now(), 3, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0)"), {"u": user_key})
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 120.0})

    started = time.monotonic()
    report = erase_user(settings, engine, user_key, actor="test")
    took_s = time.monotonic() - started

    assert report["worker_state_erased"] is False
    assert report["rows_removed"] == {"user_profiles": 1}
    assert took_s < 60, f"waited {took_s:.0f} s for a worker group without members"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_profiles WHERE user_key = :u"),
                            {"u": user_key}).scalar_one() == 0
        audit = conn.execute(text("SELECT details->>'worker_state_erased' FROM privacy_audit_log "
                                  "WHERE action = 'erase_state'")).scalars().all()
    assert audit == ["false"]

    partition = TopicPartition(settings.events_topic, partition_for(user_key, settings.topic_partitions))
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values = [orjson.loads(record.value) for record in consumer]
    consumer.close()
    assert values == [{"erase_user_key": user_key}]
