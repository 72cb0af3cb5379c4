"""Fixtures for integration and end-to-end tests.

They talk to the real Kafka and PostgreSQL that `make test` starts with
deploy/stack.sh infra. Each test module gets its own database, topics,
consumer group and ports, so tests never see each other's data.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from spoor.settings import Settings
from spoor.topics import create_topics
from storage.migrate import upgrade
from storage.scratch import ScratchDatabase
from storage.write_keys import create_key

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = Settings()
    db = make_url(settings.database_url)
    missing = [name for name, address in (("Kafka", settings.kafka_bootstrap.split(",")[0]),
                                          ("PostgreSQL", f"{db.host}:{db.port}"))
               if not _reachable(address)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable: run `make test` (it starts them), "
                    "or `deploy/stack.sh infra` before pytest")
    return settings


def scratch_settings(base: Settings, tmp_path_factory, prefix: str) -> tuple[Settings, ScratchDatabase]:
    """Settings of one test module: a fresh database (migrated), fresh topics, consumer group and ports."""
    run = uuid.uuid4().hex[:10]
    database = ScratchDatabase(base.database_url, f"{prefix.replace('-', '_')}_{run}")
    settings = base.model_copy(update={
        "database_url": database.url,
        "events_topic": f"{prefix.replace('-', '.', 1)}-{run}.events",
        "dead_letter_topic": f"{prefix.replace('-', '.', 1)}-{run}.events.dlq",
        "triggers_topic": f"{prefix.replace('-', '.', 1)}-{run}.triggers",
        "alerts_topic": f"{prefix.replace('-', '.', 1)}-{run}.alerts",
        "worker_app_id": f"{prefix}-{run}",
        "collector_port": free_port(),
        "worker_web_port": free_port(),
        "worker_data_dir": str(tmp_path_factory.mktemp("faust")),
        "worker_session_timeout_s": 8.0,
        "worker_batch_within_s": 0.1,
    })
    upgrade(settings.database_url)
    create_topics(settings)
    return settings, database


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


class SpoorProcess:
    """A real `spoor collector` / `spoor worker` process with the test's settings."""

    def __init__(self, command: str, settings: Settings, log_dir: Path):
        self.command = command
        self.settings = settings
        self.log_path = log_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({f"SPOOR_{name.upper()}": str(value) for name, value in self.settings.model_dump().items()})
        return env

    def start(self, health_url: str, timeout: float = 90) -> "SpoorProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "spoor.cli", self.command], cwd=REPO,
                                        env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._healthy(health_url), timeout, f"{self.command} to be healthy ({self.log_path})")
        return self

    def _healthy(self, url: str) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.command} exited with {self.process.returncode}:\n{self.log_tail()}")
        import urllib.request
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


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
    """A real local HTTP server recording webhook calls (tests/webhook_receiver.py)."""
    from tests.webhook_receiver import WebhookReceiver
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
