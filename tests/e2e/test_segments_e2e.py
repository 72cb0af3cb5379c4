"""End to end on the real stack: shoppers' traffic through the collector and the worker puts them in a
segment (kept current by a real `spoor segments run`), cart abandonment triggers on the triggers topic
drive a campaign (a real `spoor campaigns run`) whose webhook receiver gets exactly one signed call per
user, with the frequency cap, quiet hours, consent and holdout honoured; then a user is erased."""

import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import text

from spoor.campaigns.campaign_rules import idempotency_key, in_holdout
from spoor.campaigns.trigger_intake import trigger_message
from spoor.campaigns.webhook_delivery import verify
from spoor.cli.collector_client import CollectorClient
from spoor.privacy.erasure import audit_hash
from spoor.topics import create_producer, create_segment_topics
from tests.support.local_stack import REPO, SpoorProcess, free_port, run_id, spoor_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SECRET = "e2e-webhook-secret"
CAMPAIGN = "cart_rescue_e2e"


@pytest.fixture(scope="module")
def settings(test_settings):
    run = run_id(8)
    settings = test_settings.model_copy(update={
        "campaign_webhook_secret": SECRET, "triggers_topic": f"spoor.test-{run}.triggers",
        "segments_topic": f"spoor.test-{run}.segments", "campaigns_dead_letter_topic": f"spoor.test-{run}.cdlq",
        "segments_poll_s": 0.5, "campaigns_poll_s": 0.5, "segments_change_overlap_s": 5.0,
        "segments_web_port": free_port(), "campaigns_web_port": free_port(),
        "webhook_allow_private_addresses": True})  # the receiver is on 127.0.0.1
    create_segment_topics(settings)
    return settings


@pytest.fixture(scope="module")
def runners(settings, tmp_path_factory):
    """`spoor segments run` and `spoor campaigns run` as real processes."""
    with spoor_commands(settings, tmp_path_factory.mktemp("runner-logs"), [("segments", "run"), ("campaigns", "run")],
                        [settings.segments_web_port, settings.campaigns_web_port]) as log_dir:
        yield log_dir


def http_get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return None, ""


def spoor(settings, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, input=stdin, text=True,
                            capture_output=True, env=SpoorProcess("cli", settings, REPO).env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def choose_users() -> tuple[list[str], list[str]]:
    run = run_id(6)
    candidates = [f"e2e-{run}-{i}" for i in range(200)]
    treated = [u for u in candidates if not in_holdout(CAMPAIGN, u, 25)][:6]
    held = [u for u in candidates if in_holdout(CAMPAIGN, u, 25)][:2]
    return treated, held


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def test_traffic_to_segment_to_campaign_to_webhook(settings, collector, start_process, write_key, engine,
                                                   receiver, runners):
    start_process("worker")
    treated, held = choose_users()
    plain_1, plain_2, plain_3, opted_out, quiet, capped = treated
    buyer = f"{treated[0]}-buyer"
    now = datetime.now(timezone.utc)

    # Definitions through the CLI, as a marketer would.
    spoor(settings, "segments", "define", "-", stdin="""
name: carted_last_hour
description: added to cart in the last hour without ordering
where: 'did "Product Added" in last 1h and not "Order Completed"'
""")
    spoor(settings, "segments", "launch", "carted_last_hour")
    # Quiet hours 6 h to 9 h from now (UTC clock): users in UTC are outside them, a user at UTC+7 inside.
    quiet_start, quiet_end = (now + timedelta(hours=6)).strftime("%H:%M"), (now + timedelta(hours=9)).strftime("%H:%M")
    spoor(settings, "campaigns", "define", "-", stdin=f"""
name: {CAMPAIGN}
audience: {{trigger: cart_abandonment}}
action: {{webhook: "{receiver.url}"}}
frequency_cap: {{max: 1, per: 1d}}
quiet_hours: {{start: "{quiet_start}", end: "{quiet_end}"}}
expires_after: 1d
holdout_percent: 25
max_attempts: 3
retry_backoff: 1s
""")
    spoor(settings, "campaigns", "launch", CAMPAIGN)
    spoor(settings, "users", "consent", opted_out, "--opt-out")
    spoor(settings, "users", "consent", quiet, "--time-zone", "Etc/GMT-7")  # UTC+7

    # Shoppers browse and add to cart through the collector; one of them also orders.
    client = CollectorClient(collector, write_key)
    batch = []
    for user in [*treated, *held, buyer]:
        batch += [{"type": "track", "event": "Product Viewed", "userId": user, "messageId": f"{user}-v",
                   "properties": {"product_id": "SKU-1", "price": 30}},
                  {"type": "track", "event": "Product Added", "userId": user, "messageId": f"{user}-a",
                   "properties": {"product_id": "SKU-1", "price": 30, "quantity": 1}}]
    batch.append({"type": "track", "event": "Order Completed", "userId": buyer, "messageId": f"{buyer}-o",
                  "properties": {"order_id": "o-1", "revenue": 30}})
    status, body = client.post("/v1/batch", {"batch": batch})
    assert status == 200, body

    members = set(treated + held)
    # The opted-out shopper's events are withheld from profiling (docs/privacy.md#consent): never in a segment.
    profiled = members - {opted_out}
    wait_until(lambda: {r.user_key for r in rows(engine, "SELECT user_key FROM segment_members "
                                                         "WHERE segment = 'carted_last_hour'")} == profiled,
               90, "the shoppers to enter the segment")
    # Enter messages reach the segments topic.
    consumer = KafkaConsumer(settings.segments_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    entered = set()
    deadline = time.monotonic() + 30
    while entered != profiled and time.monotonic() < deadline:
        entered |= {m["user_key"] for m in map(lambda r: orjson.loads(r.value), consumer)
                    if m["segment"] == "carted_last_hour" and m["change"] == "enter"}
    consumer.close()
    assert entered == profiled

    # The stream's cart-abandonment triggers (built elsewhere) arrive on the triggers topic.
    producer = create_producer(settings, "e2e-triggers")
    fired = datetime.now(timezone.utc)
    for user in sorted(members):
        producer.send(settings.triggers_topic, key=user.encode(),
                      value=trigger_message("cart_abandonment", user, "1", fired, {"product_id": "SKU-1"}))
    producer.send(settings.triggers_topic, key=plain_1.encode(),  # a redelivered trigger
                  value=trigger_message("cart_abandonment", plain_1, "1", fired, {"product_id": "SKU-1"}))
    producer.send(settings.triggers_topic, key=capped.encode(),  # a second episode, over the cap
                  value=trigger_message("cart_abandonment", capped, "2", fired + timedelta(seconds=1)))
    producer.flush()
    producer.close()

    def settled():
        status = {(r.user_key, r.episode.rsplit(":", 1)[1]): r.status for r in rows(
            engine, "SELECT user_key, episode, status FROM campaign_deliveries WHERE campaign = :c", c=CAMPAIGN)}
        return status if len(status) == len(members) + 1 and "pending" not in {
            s for (u, _), s in status.items() if u != quiet} else None

    status = wait_until(settled, 60, "every delivery to be decided")
    assert status == {(plain_1, "1"): "sent", (plain_2, "1"): "sent", (plain_3, "1"): "sent",
                      (capped, "1"): "sent", (capped, "2"): "capped", (opted_out, "1"): "opted_out",
                      (quiet, "1"): "pending", **{(u, "1"): "holdout" for u in held}}
    # The quiet-hours delivery waits for the end of the user's quiet hours (UTC+7).
    (next_attempt,), = rows(engine, "SELECT next_attempt_at FROM campaign_deliveries WHERE user_key = :u", u=quiet)
    assert timedelta(hours=1) < next_attempt - datetime.now(timezone.utc) < timedelta(hours=3)

    time.sleep(2)  # a few more dispatcher turns: still one call per user
    for user in (plain_1, plain_2, plain_3, capped):
        calls = receiver.calls_for(user)
        assert len(calls) == 1, user
        headers = calls[0]["headers"]
        assert verify(SECRET, headers["X-Spoor-Timestamp"], calls[0]["body"], headers["X-Spoor-Signature"])
        assert headers["Idempotency-Key"] == idempotency_key(CAMPAIGN, user, f"cart_abandonment:{user}:1")
    for user in (opted_out, quiet, buyer, *held):
        assert receiver.calls_for(user) == []
    assert len(receiver.calls) == 4
    _, exposed = http_get(f"http://127.0.0.1:{settings.campaigns_web_port}/metrics")
    assert 'spoor_campaigns_deliveries_total{outcome="sent"} 4.0' in exposed
    assert 'spoor_campaigns_triggers_total{outcome="duplicate"} 1.0' in exposed
    _, exposed = http_get(f"http://127.0.0.1:{settings.segments_web_port}/metrics")
    assert 'spoor_segments_published_total' in exposed

    # Erasure: the running worker's state, PostgreSQL rows, a tombstone on the worker's table changelog,
    # an audit record.
    report = orjson.loads(spoor(settings, "users", "erase", plain_1))
    assert report["worker_state_erased"] is True
    changelog = f"{settings.worker_app_id}-user-profiles-changelog"
    assert changelog in report["tombstones"]
    for table in ("user_profiles", "events", "segment_members", "segment_transitions", "campaign_deliveries",
                  "behaviour_triggers"):
        assert rows(engine, f"SELECT 1 FROM {table} WHERE user_key = :u", u=plain_1) == [], table
    audit = rows(engine, "SELECT action, actor FROM privacy_audit_log WHERE user_key_hmac = :h ORDER BY id",
                 h=audit_hash(settings.audit_hmac_key.encode(), plain_1))
    assert [tuple(a) for a in audit] == [("erase_rows", "cli"), ("erase_state", "cli")]
    consumer = KafkaConsumer(changelog, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    records = [r for r in consumer if r.key == plain_1.encode()]
    consumer.close()
    assert records and records[-1].value is None  # the latest record of the key is its tombstone
    assert len(records) >= 2  # the worker's state record(s), then the tombstone

    # The user comes back: the running worker starts a new profile, with nothing of the erased past.
    status, body = client.post("/v1/batch", {"batch": [{"type": "track", "event": "Product Viewed", "userId": plain_1,
                                                        "messageId": f"{plain_1}-after-erasure"}]})
    assert status == 200, body
    wait_until(lambda: rows(engine, "SELECT 1 FROM user_profiles WHERE user_key = :u", u=plain_1), 60,
               "the returning user's new profile")
    assert rows(engine, "SELECT events, product_views, cart_adds FROM user_profiles WHERE user_key = :u",
                u=plain_1) == [(1, 1, 0)]
    assert rows(engine, "SELECT event_id FROM events WHERE user_key = :u", u=plain_1) == [(f"{plain_1}-after-erasure",)]
