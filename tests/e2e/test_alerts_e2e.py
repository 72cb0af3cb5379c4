"""Alerts end to end: traffic with an injected drop goes HTTP -> collector -> Kafka -> Faust metric
windows -> PostgreSQL -> rule evaluation; the alert fires, reaches an Alertmanager-compatible receiver
and an HMAC-signed webhook receiver, lands on the alerts topic, and resolves when traffic recovers.
Time is compressed through the events' timestamps: an hour of traffic is sent in seconds."""

import uuid
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import text

from spoor.alerts import store
from spoor.cli.collector_client import CollectorClient
from tests.support.alert_receivers import Receiver
from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
SECRET = "test-webhook-secret"
RULES = """
version: 1
rules:
  - id: events-drop
    metric: events
    resolution: 1m
    dimension: global
    detector: {kind: seasonal, direction: drop, season: none, sensitivity: 4, warmup_windows: 20, min_expected: 10}
    fire_after: 2
    resolve_after: 2
    severity: critical
    runbook: https://runbooks.example/events-drop
    summary: Tracked events dropped
"""
NORMAL, DROPPED = 30, 3
DROP_MINUTES = range(40, 46)
LAST_MINUTE = 60


def per_minute(minute: int) -> int:
    return DROPPED if minute in DROP_MINUTES else NORMAL


def traffic(minute: int) -> list[dict]:
    """``per_minute(minute)`` events from different shoppers, timed within that minute."""
    return [{"type": "track", "event": "Product Viewed", "userId": f"shopper-{minute}-{i}",
             "messageId": str(uuid.uuid4()), "properties": {"product_id": f"P{i}", "category": "shoes"},
             "timestamp": (T0 + timedelta(minutes=minute, seconds=i)).isoformat()}
            for i in range(per_minute(minute))]


@pytest.fixture(scope="module")
def receivers():
    alertmanager, webhook = Receiver(fail_first=1), Receiver(secret=SECRET.encode())
    yield alertmanager, webhook
    alertmanager.close()
    webhook.close()


@pytest.fixture(scope="module")
def alerting_worker(start_process, test_settings, receivers, tmp_path_factory):
    alertmanager, webhook = receivers
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    overrides = {"alert_rules_path": str(rules), "alertmanager_url": alertmanager.url,
                 "alert_webhook_url": webhook.url + "/hooks/spoor", "alert_webhook_secret": SECRET,
                 "metric_lateness_s": 60.0, "alert_eval_interval_s": 0.5,
                 "webhook_allow_private_addresses": True}  # the receivers are on 127.0.0.1
    start_process("worker", **overrides)
    return overrides


def test_drop_fires_notifies_and_resolves(collector, alerting_worker, receivers, write_key, engine, test_settings):
    alertmanager, webhook = receivers
    client = CollectorClient(collector, write_key)
    for minute in range(LAST_MINUTE + 1):
        status, body = client.send_batch(traffic(minute))
        assert status == 200, body
    client.close()

    def alert_states():
        return [(a["rule_id"], a["status"]) for a in store.list_alerts(engine)]

    wait_until(lambda: ("events-drop", "resolved") in alert_states(), 120, "the alert to fire and resolve")
    [alert] = [a for a in store.list_alerts(engine) if a["status"] == "resolved"]
    assert alert["started_at"] == T0 + timedelta(minutes=DROP_MINUTES[0] + 1)  # end of the first dropped window
    assert alert["fired_at"] == T0 + timedelta(minutes=DROP_MINUTES[0] + 2)  # 2 anomalous windows to fire
    assert alert["resolved_at"] == T0 + timedelta(minutes=DROP_MINUTES[-1] + 3)  # 2 normal windows to resolve
    assert alert["evidence"]["worst"]["observed"] == DROPPED
    assert alert["evidence"]["worst"]["expected"] == pytest.approx(NORMAL, rel=0.05)

    # The windows themselves: exact counts, written once per (window, dimension, partition).
    with engine.connect() as conn:
        per_window = dict(conn.execute(text(
            "SELECT window_start, sum(events) FROM metric_windows WHERE resolution = '1m' AND dimension = 'global' "
            "GROUP BY window_start")).all())
        five = conn.execute(text(
            "SELECT sum(active_users) FROM metric_windows WHERE resolution = '5m' AND dimension = 'category:shoes' "
            "AND window_start = :at"), {"at": T0 + timedelta(minutes=40)}).scalar_one()
    assert per_window[T0] == NORMAL and per_window[T0 + timedelta(minutes=42)] == DROPPED
    assert five == 5 * DROPPED

    # Both receivers got the firing and the resolved notification; the first Alertmanager post got a 503.
    def statuses(receiver, extract):
        return [extract(body) for _path, body in receiver.received]

    wait_until(lambda: {"firing", "resolved"} <= set(statuses(webhook, lambda b: b["status"])), 30, "webhook posts")
    assert webhook.bad_signatures == 0 and webhook.received[0][0] == "/hooks/spoor"
    assert webhook.received[0][1]["schema"] == "spoor.alert/1"

    def alertmanager_ended():
        return any(body[0]["endsAt"] == alert["resolved_at"].isoformat() for _path, body in alertmanager.received)

    wait_until(alertmanager_ended, 30, "the resolved alert at the Alertmanager receiver")
    assert alertmanager.failed == 1
    path, [posted] = alertmanager.received[0]
    assert path == "/api/v2/alerts" and posted["labels"]["alertname"] == "events-drop"
    assert posted["labels"]["severity"] == "critical" and posted["annotations"]["runbook_url"]

    # The transitions are on the alerts topic, keyed by fingerprint.
    consumer = KafkaConsumer(test_settings.alerts_topic, bootstrap_servers=test_settings.kafka_bootstrap.split(","),
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    published = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert [m["status"] for m in published] == ["pending", "firing", "resolved"]
    assert {m["fingerprint"] for m in published} == {alert["fingerprint"]}

    # Prometheus export of the business metrics.
    exported = httpx.get(f"http://127.0.0.1:{test_settings.worker_web_port}/metrics").text
    assert 'spoor_business_metric{dimension="global",metric="events",resolution="1m"}' in exported
    assert 'spoor_alert_transitions_total{rule_id="events-drop",status="firing"} 1.0' in exported


def spoor_cli(settings, *args: str) -> str:
    import subprocess
    import sys
    env = {**__import__("os").environ, "SPOOR_DATABASE_URL": settings.database_url}
    done = subprocess.run([sys.executable, "-m", "spoor.cli", "alerts", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_lists_acks_silences_and_replays(alerting_worker, engine, test_settings):
    [alert] = store.list_alerts(engine, "resolved")
    listing = spoor_cli(test_settings, "list")
    assert "events-drop" in listing and "resolved" in listing
    assert f"alert {alert['id']} acknowledged" in spoor_cli(test_settings, "ack", str(alert["id"]), "--by", "oncall")
    assert store.list_alerts(engine, "resolved")[0]["acked_by"] == "oncall"
    assert "no notifications for events-drop" in spoor_cli(test_settings, "silence", "events-drop", "--for", "30m")
    assert store.silenced(engine, "events-drop", alert["fingerprint"])

    rules = alerting_worker["alert_rules_path"]
    window = ["--since", T0.isoformat(), "--until", (T0 + timedelta(minutes=LAST_MINUTE)).isoformat()]
    replayed = spoor_cli(test_settings, "replay", "events-drop", "--rules", rules, *window)
    assert "FIRING" in replayed and "RESOLVED" in replayed and "fired 1 times" in replayed
    # Tuning: a stricter sensitivity no longer fires on this drop.
    stricter = spoor_cli(test_settings, "replay", "events-drop", "--rules", rules, *window, "--set", "sensitivity=6")
    assert "fired 0 times" in stricter


@pytest.mark.parametrize("overrides, reason", [
    ({"alert_webhook_url": "https://hooks.example/spoor", "alert_webhook_secret": ""},
     "SPOOR_ALERT_WEBHOOK_SECRET is not"),
    ({"alert_slack_webhook_url": "http://127.0.0.1:9/slack"}, "SPOOR_ALERT_SLACK_WEBHOOK_URL: .*loopback"),
])
def test_a_worker_with_an_unsigned_or_internal_alert_webhook_does_not_start(test_settings, tmp_path, overrides,
                                                                            reason):
    import re
    import subprocess
    import sys

    from tests.support.local_stack import REPO, SpoorProcess, free_port
    settings = test_settings.model_copy(update={**overrides, "worker_web_port": free_port(),
                                                "worker_data_dir": str(tmp_path / "faust")})
    process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "worker"], cwd=REPO,
                               env=SpoorProcess("worker", settings, tmp_path).env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=60)  # the old worker started and ran
    except subprocess.TimeoutExpired:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        raise AssertionError(f"the worker started:\n{output[-2000:]}") from None
    assert process.returncode != 0 and re.search(reason, output), output[-2000:]
