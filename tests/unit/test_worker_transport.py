"""The worker's Kafka consumer takes its fetch wait and size from settings, not Faust's fixed 1500 ms and 1 byte."""

import asyncio

import faust
import pytest
from pydantic import ValidationError

from spoor.settings import Settings
from spoor.stream_processors.app import create_app


def fetch_wait_of(app: faust.App) -> tuple[int, int]:
    """(the longest wait, the data waited for) of the worker's fetches."""
    async def build() -> tuple[int, int]:
        kafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)  # built, never started
        try:
            return kafka_consumer._fetch_max_wait_ms, kafka_consumer._fetch_min_bytes
        finally:
            await kafka_consumer.stop()
    return asyncio.run(build())


def test_faust_alone_fixes_the_fetch_wait_at_1500_ms():
    assert fetch_wait_of(faust.App("plain-faust", broker="kafka://127.0.0.1:9092")) == (1500, 1)


def test_worker_consumer_uses_the_configured_fetch_wait():
    defaults = Settings()
    assert fetch_wait_of(create_app(defaults)) == (defaults.worker_fetch_max_wait_ms,
                                                   defaults.worker_fetch_min_bytes)
    assert fetch_wait_of(create_app(Settings(worker_fetch_max_wait_ms=37, worker_fetch_min_bytes=4096))) == (37, 4096)


@pytest.mark.parametrize("value", ["0", "-1", str(16 * 2**20 + 1), "lots", ""])
def test_a_fetch_minimum_out_of_its_bounds_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("SPOOR_WORKER_FETCH_MIN_BYTES", value)
    with pytest.raises(ValidationError, match="worker_fetch_min_bytes"):
        Settings()


def test_a_fetch_minimum_within_its_bounds_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPOOR_WORKER_FETCH_MIN_BYTES", str(16 * 2**20))
    assert Settings().worker_fetch_min_bytes == 16 * 2**20
