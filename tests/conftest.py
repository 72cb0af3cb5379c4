"""Fixtures for integration and end-to-end tests.

They talk to the real Kafka and PostgreSQL that `make test` starts with
deploy/stack.sh infra. Each test module gets its own database, topics,
consumer group and ports, so tests never see each other's data.
"""

import socket
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from spoor.settings import Settings
from spoor.storage.write_keys import create_key
from tests.support.local_stack import SpoorProcess, delete_run_topics, scratch_settings


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    settings = Settings()
    db = make_url(settings.database_url)
    missing = [name for name, address in (("Kafka", settings.kafka_bootstrap.split(",")[0]),
                                          ("PostgreSQL", f"{db.host}:{db.port}"))
               if not _reachable(address)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable: run `make test` (it starts them), "
                    "or `deploy/stack.sh infra` before pytest")
    yield settings
    try:
        delete_run_topics(settings)
    except Exception as error:  # the tests' outcome stands; the topics stay on the broker
        warnings.warn(f"the test topics were not deleted: {error!r}", stacklevel=1)


@pytest.fixture(scope="module")
def test_settings(base_settings, tmp_path_factory) -> Settings:
    """A fresh database (migrated), fresh topics and a fresh consumer group for one test module."""
    settings, database = scratch_settings(base_settings, tmp_path_factory, "spoor-test")
    yield settings
    database.drop()


@pytest.fixture(scope="module")
def engine(test_settings):
    engine = create_engine(test_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def write_key(engine) -> str:
    return create_key(engine, "test", "web")


@pytest.fixture(scope="module")
def start_process(test_settings, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    started: list[SpoorProcess] = []

    def start(command: str, **overrides) -> SpoorProcess:
        settings = test_settings.model_copy(update=overrides)
        if command == "collector":
            url = f"http://127.0.0.1:{settings.collector_port}/healthz"
        else:
            url = f"http://127.0.0.1:{settings.worker_web_port}/healthz"
        process = SpoorProcess(command, settings, log_dir)
        started.append(process)
        return process.start(url)

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture(scope="module")
def collector(start_process, test_settings, engine, write_key):
    start_process("collector")
    return f"http://127.0.0.1:{test_settings.collector_port}"


@pytest.fixture(scope="module")
def receiver():
    """A real local HTTP server recording webhook calls (tests/support/webhook_receiver.py)."""
    from tests.support.webhook_receiver import WebhookReceiver
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
