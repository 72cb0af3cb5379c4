"""Fixtures of the fault suite: it stops brokers and databases, so it runs its OWN Kafka and
PostgreSQL (deploy/kafka.sh and deploy/postgres.sh in /var/tmp/spoor-faults, Kafka on 9192/9193,
PostgreSQL on 5533), started before the first scenario and stopped after the last. The shared ones on
9092/5433 are never touched.

``base_settings`` is overridden, so tests/conftest.py's per-module fixtures (``test_settings``,
``engine``, ``write_key``, ``start_process``, ``collector``) give each module its own database,
topics and consumer group on the private servers.
"""

import pytest

from spoor.settings import Settings
from tests.faults import harness
from tests.support.local_stack import scratch_settings


def pytest_collection_modifyitems(config, items):
    """Keep the form SPOOR_FAULTS asks for (short unless it says full); deselect the other."""
    if harness.FORM not in ("short", "full"):
        raise pytest.UsageError(f"SPOOR_FAULTS must be short or full, not {harness.FORM!r}")
    keep, drop = [], []
    for item in items:
        form = getattr(item, "callspec", None) and item.callspec.params.get("form")
        in_suite = "tests/faults/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("faults/")
        (drop if in_suite and form and form != harness.FORM else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    if harness.SUMMARIES:
        terminalreporter.section("fault suite: what each scenario checked")
        for line in harness.SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def faults_infra():
    """Package scope: in `make test` the servers stop after the last fault scenario, not at the session's end."""
    infra = harness.Infra()
    infra.start()
    yield infra
    infra.stop()


@pytest.fixture(scope="package")
def base_settings(faults_infra) -> Settings:
    return Settings().model_copy(update={"kafka_bootstrap": faults_infra.bootstrap,
                                         "database_url": faults_infra.database_url})


@pytest.fixture(scope="module")
def test_settings(base_settings, tmp_path_factory) -> Settings:
    """tests/conftest.py's per-module settings (own database, topics, group, ports), with a database drop
    that survives the PostgreSQL restart of a scenario (the admin connection it pooled is gone then)."""
    settings, database = scratch_settings(base_settings, tmp_path_factory, "spoor-faults")
    yield settings
    database._admin.dispose()
    database.drop()


@pytest.fixture(scope="module")
def workers(test_settings, tmp_path_factory):
    """Makes ``harness.Worker``s with the module's settings (plus overrides); stops them at the end."""
    log_dir = tmp_path_factory.mktemp("worker-logs")
    made: list[harness.Worker] = []

    def make(name: str = "worker", **overrides) -> harness.Worker:
        worker = harness.Worker(test_settings.model_copy(update=overrides), log_dir, name)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


@pytest.fixture(scope="module")
def client(collector, write_key):
    client = harness.Client(collector, write_key)
    yield client
    client.close()
