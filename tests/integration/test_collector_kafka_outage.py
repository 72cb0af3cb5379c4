"""Kafka goes down: the collector answers 503 + Retry-After, and a retry after it is back is durable.

Runs its own single-node broker (deploy/kafka.sh with private ports and run
dir) so that stopping it does not disturb the other tests.
"""

import os
import subprocess
import time
import uuid

import httpx
import orjson
import pytest
from kafka import KafkaConsumer

from spoor.topics import create_topics
from tests.support.local_stack import REPO, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory):
    env = {**os.environ, "SPOOR_RUN_DIR": str(tmp_path_factory.mktemp("kafka-outage")),
           "SPOOR_KAFKA_PORT": str(free_port()), "SPOOR_KAFKA_CONTROLLER_PORT": str(free_port()),
           "SPOOR_KAFKA_HEAP": "384m"}

    def kafka(action: str) -> None:
        subprocess.run([str(REPO / "deploy/kafka.sh"), action], env=env, check=True, capture_output=True)

    kafka("start")
    yield kafka, f"127.0.0.1:{env['SPOOR_KAFKA_PORT']}"
    kafka("stop")


def batch(tag: str) -> dict:
    return {"batch": [{"type": "track", "userId": f"u{i}", "messageId": f"{tag}-{i}", "event": "Product Viewed",
                       "properties": {"product_id": "P1"}} for i in range(20)]}


def event_ids_in_topic(settings) -> set[str]:
    consumer = KafkaConsumer(settings.events_topic, bootstrap_servers=settings.kafka_bootstrap,
                             group_id=f"check-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    ids = set()
    for record in consumer:
        value = orjson.loads(record.value)
        ids.update(e["event_id"] for e in (value if isinstance(value, list) else [value]))
    consumer.close()
    return ids


def test_outage_answers_503_and_the_retry_is_durable(private_kafka, start_process, test_settings, write_key):
    kafka, bootstrap = private_kafka
    settings = test_settings.model_copy(update={"kafka_bootstrap": bootstrap, "kafka_delivery_timeout_ms": 4000})
    create_topics(settings)
    start_process("collector", kafka_bootstrap=bootstrap, kafka_delivery_timeout_ms=4000)
    client = httpx.Client(base_url=f"http://127.0.0.1:{settings.collector_port}", auth=(write_key, ""),
                          timeout=30)
    assert client.post("/v1/batch", json=batch("before")).status_code == 200

    kafka("stop")
    refused = client.post("/v1/batch", json=batch("during"))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert client.get("/healthz").status_code == 503

    kafka("start")
    deadline = time.monotonic() + 90
    while (status := client.post("/v1/batch", json=batch("during")).status_code) != 200:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(2)
    assert client.get("/healthz").status_code == 200
    stored = event_ids_in_topic(settings)
    assert {f"before-{i}" for i in range(20)} <= stored
    assert {f"during-{i}" for i in range(20)} <= stored
