"""Helpers of the integration, end-to-end and fault tests: free ports, waiting, per-module settings
on the real Kafka and PostgreSQL, and real ``spoor`` processes."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka.admin import KafkaAdminClient
from kafka.errors import UnknownTopicOrPartitionError

from spoor.settings import Settings, environment
from spoor.storage.migrate import upgrade
from spoor.topics import create_topics
from tests.support.scratch_db import ScratchDatabase

REPO = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUN_IDS: set[str] = set()  # every run id made in this test session


def run_id(length: int = 10) -> str:
    """A fresh id (hex) for the names of a test's topics, consumer groups and worker app: the session deletes the
    topics named with its ids when it ends (``delete_run_topics``)."""
    run = uuid.uuid4().hex[:length]
    _RUN_IDS.add(run)
    return run


def delete_run_topics(settings: Settings) -> int:
    """Deletes the topics named with this session's run ids (its tests' topics and their workers' Faust topics):
    a broker kept between test sessions would otherwise gather thousands of partitions and take minutes to
    start. Another session's topics on the same broker are not touched."""
    if not _RUN_IDS:
        return 0
    ids = re.compile(rf"(?<![0-9a-f])({'|'.join(sorted(_RUN_IDS))})(?![0-9a-f])")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="spoor-tests")
    try:
        made = sorted(name for name in admin.list_topics() if ids.search(name))
        for start in range(0, len(made), 100):
            try:
                admin.delete_topics(made[start:start + 100], timeout_ms=60_000)
            except UnknownTopicOrPartitionError:  # one was gone already: the request deleted the others
                pass
    finally:
        admin.close()
    return len(made)


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25,
               explain: Callable[[], str] | None = None):
    """``condition()``'s first truthy result within ``timeout`` s; else an AssertionError naming ``what``,
    with ``explain()`` (the state a reader needs to tell where it stopped) when given."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f"\n{explain()}" if explain else ""))
        time.sleep(interval)


def scratch_settings(base: Settings, tmp_path_factory, prefix: str) -> tuple[Settings, ScratchDatabase]:
    """Settings of one test module: a fresh database (migrated), fresh topics, consumer group and ports."""
    run = run_id()
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
        "audit_hmac_key": "test-audit-hmac-key-" + uuid.uuid4().hex,  # erasure needs one (privacy/erasure.py)
        # the real data sets are from 2010-2020: a runner's retention job must not delete them mid-test
        "retention_events_days": 36500, "retention_sessions_days": 36500, "retention_order_attribution_days": 36500,
    })
    upgrade(settings.database_url)
    create_topics(settings)
    return settings, database


class SpoorProcess:
    """A real `spoor collector` / `spoor worker` process with the test's settings."""

    def __init__(self, command: str, settings: Settings, log_dir: Path):
        self.command = command
        self.settings = settings
        self.log_path = log_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(environment(self.settings))
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


def _healthz(port: int) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def spoor_commands(settings: Settings, log_dir: Path, commands: list[tuple[str, ...]],
                   health_ports: list[int]) -> Iterator[Path]:
    """Real `spoor <command>` processes (runners, the admin API) with the test's settings, each logging to
    ``log_dir``; yields once every port in ``health_ports`` answers /healthz, stops them after."""
    started = []
    try:
        for args in commands:
            log = open(log_dir / f"{'-'.join(args)}.log", "ab")
            started.append(subprocess.Popen([sys.executable, "-m", "spoor.cli", *args], cwd=REPO,
                                            env=SpoorProcess(args[0], settings, log_dir).env(), stdout=log,
                                            stderr=subprocess.STDOUT))
        for port in health_ports:
            wait_until(lambda: _healthz(port), 60, f"a spoor process on port {port} ({log_dir})")
        yield log_dir
    finally:
        for process in started:
            process.terminate()
            process.wait(30)
