"""c. The Kafka broker goes away and comes back while the collector and the worker run and a client
sends with retries (503 -> wait -> the same request again, until 200, as the SDKs do).

The short form stops the broker (SIGTERM, deploy/kafka.sh stop) for 10 s; the long form for 20 s,
then SIGKILLs it and keeps it down for 15 s. Afterwards PostgreSQL must equal the answers of
everything the collector answered 200 for, exactly, and a canary must arrive within seconds.
"""

import time

import pytest

from tests.faults.harness import FORMS, Client, Sender, Summary
from tests.faults.workload import batches, persisted_count, settled, shoppers

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.mark.parametrize("form", FORMS)
def test_broker_restart_under_traffic_loses_and_doubles_nothing(form, faults_infra, start_process, write_key,
                                                                 engine, workers, test_settings):
    summary = Summary("c. Kafka broker restarted under traffic", form)
    full = form == "full"
    outages = [("stop", 20), ("kill", 15)] if full else [("stop", 10)]
    collector = start_process("collector", kafka_delivery_timeout_ms=5000)
    client = Client(f"http://127.0.0.1:{test_settings.collector_port}", write_key, give_up_s=45)
    worker = workers().start()

    pool = shoppers("kafka", users=4000 if full else 1500, events_per_user=12, seed=3)
    sender = Sender(client, batches(pool, 25), pause_s=0.1, retry_every=7)
    sender.start()
    time.sleep(5)
    timeline = []
    for how, seconds in outages:
        before = sender.batches_sent
        started = time.monotonic()
        if how == "stop":
            faults_infra.kafka("stop")
        else:
            faults_infra.kill_kafka()
        stopped = time.monotonic()
        time.sleep(seconds)
        faults_infra.kafka("start")
        back = time.monotonic()
        timeline.append(f"{how} {stopped - started:.0f} s + down {seconds} s + start {back - stopped - seconds:.0f} s")
        time.sleep(10)  # traffic goes on; the sender's retries get through
        recovery = client.first_ok_after(back)
        timeline[-1] += f", first 200 {recovery:.1f} s after" if recovery is not None else ", no 200 within 10 s"
        if sender.batches_sent == before:
            summary.problem(f"no batch got through within 10 s of the broker's return ({how})")
        worker.ensure_running()
    try:
        sent = sender.finish()
    except AssertionError as err:  # the client gave up: say why, then check what was accepted
        sent = sender.sent
        log = [line for line in collector.log_tail(400).splitlines() if "ingest.collector" in line]
        summary.problem(f"after the broker came back: {err}; collector log: {log[-2:]}")

    result, expected_ids, latency = settled(engine, client, summary, sent, "kafka-restart",
                                            lambda: (persisted_count(engine), worker.ensure_running()),
                                            "the worker to catch up", stall_s=90)
    if client.five_xx():
        summary.problem(f"the collector answered {client.five_xx()} (5xx other than 503)")
    if worker.exits:
        summary.problem(f"`spoor worker` itself exited ({worker.exits}) and had to be started again: "
                        f"{worker.critical_lines(8)}")
    summary.add(events=len(expected_ids), outages="; ".join(timeline),
                answers_503=client.statuses.get(503, 0), client_retries=client.retries,
                persisted=result.persisted, lost=len(result.lost), doubled=result.doubled,
                supervisor_restarts=worker.fail_stops(), orchestrator_restarts=worker.starts - 1,
                canary_s=latency if latency is not None else "missing")
    client.close()
    summary.finish()
