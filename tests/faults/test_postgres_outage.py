"""d. PostgreSQL stops mid-stream (60 s in the long form, 20 s in the short one) and comes back.

The worker retries its transaction (stream_processors/blocking.py retry_transient) and, when the
outage outlasts the retries, fail-stops with exit 70 before acknowledging anything; `spoor worker`'s
supervisor starts it again. That is allowed: what is checked is that nothing is lost or counted
twice, that `spoor worker` itself never exits, and that the collector keeps answering (it needs
Kafka, not PostgreSQL).
"""

import time

import pytest

from tests.faults.harness import FORMS, Client, Sender, Summary
from tests.faults.workload import batches, persisted_count, settled, shoppers

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.mark.parametrize("form", FORMS)
def test_database_outage_loses_and_doubles_nothing(form, faults_infra, collector, write_key, engine, workers):
    summary = Summary("d. PostgreSQL stopped mid-stream", form)
    full = form == "full"
    down = 60 if full else 20
    client = Client(collector, write_key)
    worker = workers().start()

    pool = shoppers("pgdown", users=4000 if full else 1500, events_per_user=12, seed=4)
    sender = Sender(client, batches(pool, 25), pause_s=0.1, retry_every=7)
    sender.start()
    time.sleep(5)
    sent_before = sender.batches_sent
    started = time.monotonic()
    engine.dispose()
    faults_infra.postgres("stop")
    time.sleep(down)
    during = sender.batches_sent - sent_before
    faults_infra.postgres("start")
    down_s = time.monotonic() - started
    time.sleep(5)
    worker.ensure_running()
    sent = sender.finish()

    result, expected_ids, latency = settled(engine, client, summary, sent, "postgres-outage",
                                            lambda: (persisted_count(engine), worker.ensure_running()),
                                            "the worker to catch up", stall_s=90)
    if client.five_xx():
        summary.problem(f"the collector answered {client.five_xx()} (5xx other than 503)")
    if during == 0:
        summary.problem("the collector took no batch while PostgreSQL was down")
    if worker.exits:
        summary.problem(f"`spoor worker` itself exited ({worker.exits}) and had to be started again: "
                        f"{worker.critical_lines(8)}")
    summary.add(events=len(expected_ids), postgres_down_s=down_s, batches_taken_meanwhile=during,
                persisted=result.persisted, lost=len(result.lost), doubled=result.doubled,
                worker_fail_stops=worker.fail_stops(), orchestrator_restarts=worker.starts - 1,
                canary_s=latency if latency is not None else "missing")
    client.close()
    summary.finish()
