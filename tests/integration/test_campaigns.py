"""Campaign delivery on the real PostgreSQL and Kafka, with a real local webhook receiver.

Time is injected: each step passes the instant the dispatcher should believe it is."""

import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import select

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_dispatch import CampaignStore, dispatch_due, enqueue
from spoor.campaigns.campaign_rules import idempotency_key, in_holdout
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.campaigns.trigger_intake import TriggerIngest, trigger_message
from spoor.campaigns.webhook_delivery import Sender, verify
from spoor.privacy.consent import set_consent
from spoor.segments import membership
from spoor.segments.membership import SegmentStore
from spoor.segments.segment_language import parse_segment
from spoor.storage.segment_tables import CampaignAttempt, CampaignDelivery
from spoor.topics import create_producer, create_segment_topics
from tests.support.campaign_settings import campaign_settings
from tests.support.segments_data import profile, put_events, put_profiles, put_trigger

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)  # 10:00 UTC, outside quiet hours 21:00-08:00 UTC
SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def settings(test_settings):
    return campaign_settings(test_settings, SECRET)


@pytest.fixture(scope="module")
def producer(settings):
    producer = create_producer(settings, "test-campaigns")
    yield producer
    producer.close()


def pick_users(campaign: str, percent: float, count: int, held: bool) -> list[str]:
    users = (f"cu-{campaign}-{i}" for i in range(10_000))
    return [u for u in users if in_holdout(campaign, u, percent) == held][:count]


def test_trigger_campaign_rules_and_exactly_once_delivery(engine, settings, receiver, producer):
    spec = parse_campaign({
        "name": "cart_rescue", "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": receiver.url},
        "delay": "30m", "frequency_cap": {"max": 1, "per": "7d"}, "quiet_hours": {"start": "21:00", "end": "08:00"},
        "expires_after": "1d", "holdout_percent": 30, "max_attempts": 3, "retry_backoff": "60s",
        "message": {"template": "cart-reminder"}})
    store = CampaignStore(engine)
    store.save(spec)
    store.launch("cart_rescue", T0)
    treated = pick_users("cart_rescue", 30, 6, held=False)
    held = pick_users("cart_rescue", 30, 2, held=True)
    flaky, broken, opted_out, tokyo, capped, changed_mind = treated
    put_profiles(engine, [profile(u, T0) for u in treated + held])
    set_consent(engine, opted_out, opted_out=True)
    set_consent(engine, tokyo, time_zone="Asia/Tokyo")
    receiver.fail[flaky] = [503]
    receiver.fail[broken] = [500, 500, 500]

    # A trigger before launch is not acted on; triggers arrive from Kafka and straight into the table.
    put_trigger(engine, "cart_abandonment", flaky, "old", T0 - timedelta(hours=1))
    consumer = KafkaConsumer(settings.triggers_topic, bootstrap_servers=settings.kafka_bootstrap,
                             group_id=f"test-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                             auto_offset_reset="earliest")
    ingest = TriggerIngest(engine, consumer, producer, settings.campaigns_dead_letter_topic)
    fired = T0 + timedelta(minutes=1)
    for user in (flaky, broken, opted_out, capped, *held):
        producer.send(settings.triggers_topic, key=user.encode(),
                      value=trigger_message("cart_abandonment", user, "1", fired, {"cart_value": "42.00"}))
    producer.send(settings.triggers_topic, value=b'{"kind": "cart_abandonment", "user_key": "x"}')  # invalid
    producer.send(settings.triggers_topic, key=flaky.encode(),  # the same episode again: one delivery
                  value=trigger_message("cart_abandonment", flaky, "1", fired))
    producer.flush()
    stored = 0
    for _ in range(20):
        stored += ingest.poll_once(1000)
        if stored >= len(held) + 4:
            break
    assert stored == len(held) + 4
    put_trigger(engine, "cart_abandonment", changed_mind, "1", fired)
    put_trigger(engine, "cart_abandonment", capped, "2", fired + timedelta(minutes=5))  # same user, new episode

    def dispatch(at: datetime) -> dict:
        return dispatch_due(engine, Sender(settings, producer), at,
                            dead_letter_topic=settings.campaigns_dead_letter_topic)

    assert enqueue(engine, T0 + timedelta(minutes=7)) == len(held) + 6  # not the trigger from before launch
    assert enqueue(engine, T0 + timedelta(minutes=7)) == 0
    assert dispatch(T0 + timedelta(minutes=10)) == {}  # 30 minutes delay
    set_consent(engine, changed_mind, opted_out=True)  # after the trigger, before the send
    # 10:40: capped's 1st episode is sent, its 2nd is over the cap; flaky and broken fail once.
    assert dispatch(T0 + timedelta(minutes=40)) == {"sent": 1, "retry": 2, "opted_out": 1, "capped": 1}
    # Backoff 60 s, then 120 s: flaky succeeds on its 2nd try; broken is dead-lettered after its 3rd.
    assert dispatch(T0 + timedelta(minutes=40, seconds=59)) == {}
    assert dispatch(T0 + timedelta(minutes=41)) == {"sent": 1, "retry": 1}
    assert dispatch(T0 + timedelta(minutes=43)) == {"dead_letter": 1}
    # Quiet hours in the user's zone: due 12:15 UTC = 21:15 in Tokyo, so it waits for 08:00 Tokyo (23:00 UTC).
    put_trigger(engine, "cart_abandonment", tokyo, "1", T0 + timedelta(hours=1, minutes=45))
    assert enqueue(engine, T0 + timedelta(hours=1, minutes=50)) == 1
    assert dispatch(T0 + timedelta(hours=2, minutes=15)) == {"postpone": 1}
    assert dispatch(datetime(2026, 6, 1, 22, 59, tzinfo=timezone.utc)) == {}
    assert dispatch(datetime(2026, 6, 1, 23, 0, tzinfo=timezone.utc)) == {"sent": 1}
    assert dispatch(datetime(2026, 6, 3, tzinfo=timezone.utc)) == {}  # nothing is ever sent twice

    with engine.connect() as conn:
        rows = {(r.user_key, r.episode): r for r in conn.execute(select(CampaignDelivery))}
        attempts = conn.execute(select(CampaignAttempt)).all()
    status = {key[0]: row.status for key, row in rows.items() if key[1].endswith(":1")}
    assert status == {flaky: "sent", broken: "dead_letter", opted_out: "opted_out", tokyo: "sent", capped: "sent",
                      changed_mind: "opted_out", **{u: "holdout" for u in held}}
    assert rows[(capped, f"cart_abandonment:{capped}:2")].status == "capped"
    assert rows[(broken, f"cart_abandonment:{broken}:1")].attempts == 3
    assert rows[(broken, f"cart_abandonment:{broken}:1")].last_status_code == 500
    assert rows[(flaky, f"cart_abandonment:{flaky}:1")].last_status_code == 200
    assert len(attempts) == 1 + 2 + 3 + 1  # capped, flaky, broken, tokyo

    # Exactly one successful, signed call per treated user and episode; none for holdout or opted-out users.
    for user in (flaky, tokyo, capped):
        calls = receiver.calls_for(user)
        assert len({c["headers"]["Idempotency-Key"] for c in calls}) == 1
        call = calls[-1]
        assert verify(SECRET, call["headers"]["X-Spoor-Timestamp"], call["body"], call["headers"]["X-Spoor-Signature"])
        assert call["headers"]["Idempotency-Key"] == idempotency_key("cart_rescue", user, f"cart_abandonment:{user}:1")
        assert call["payload"]["message"] == {"template": "cart-reminder"}
    assert receiver.calls_for(flaky)[0]["payload"]["details"] == {"cart_value": "42.00"}
    for user in (opted_out, changed_mind, *held):
        assert receiver.calls_for(user) == []

    # Both the broken delivery and the invalid trigger message are on the dead-letter topic.
    dead = KafkaConsumer(settings.campaigns_dead_letter_topic, bootstrap_servers=settings.kafka_bootstrap,
                         auto_offset_reset="earliest", consumer_timeout_ms=5000)
    bad_rows = [orjson.loads(m.value) for m in dead]
    dead.close()
    assert sorted(b["processor"] for b in bad_rows) == ["campaign-triggers", "campaigns"]
    assert next(b for b in bad_rows if b["processor"] == "campaigns")["payload"]["user_key"] == broken
    consumer.close()


def test_conversion_report_treated_vs_holdout(engine):
    # Purchases within 7 days of the trigger for some treated and some holdout users.
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignDelivery.user_key, CampaignDelivery.status, CampaignDelivery.triggered_at)
                            .where(CampaignDelivery.campaign == "cart_rescue", CampaignDelivery.episode.like("%:1"))).all()
    sent = sorted(r.user_key for r in rows if r.status == "sent")
    held = sorted(r.user_key for r in rows if r.status == "holdout")
    buyers = sent[:3] + held[:1]
    put_events(engine, [{"event_id": f"conv-{u}", "user_key": u, "kind": "purchase", "name": "Order Completed",
                         "event_time": T0 + timedelta(days=2)} for u in buyers]
               + [{"event_id": f"late-{held[1]}", "user_key": held[1], "kind": "purchase", "name": "Order Completed",
                   "event_time": T0 + timedelta(days=20)}])  # outside the 7-day window
    report = campaign_dispatch.report(engine, "cart_rescue")
    assert (report["treated"], report["treated_converted"]) == (len(sent), 3)
    assert (report["holdout"], report["holdout_converted"]) == (len(held), 1)
    assert report["relative_lift"] == pytest.approx((3 / len(sent)) / (1 / len(held)) - 1)
    low, high = report["absolute_lift_ci"]
    assert low < report["absolute_lift"] < high
    assert report["deliveries_by_status"]["dead_letter"] == 1


def test_segment_entry_campaign_to_a_kafka_topic(engine, settings, producer):
    segment_store = SegmentStore(engine)
    segment_store.save(parse_segment({"name": "big_spenders", "where": "revenue >= 500"}), status="active")
    put_profiles(engine, [profile("rich-1", T0, orders=2, revenue="900", last_purchase_days=1),
                          profile("rich-2", T0, orders=1, revenue="700", last_purchase_days=1)])
    topic = f"{settings.segments_topic}.crm"
    create_segment_topics(settings.model_copy(update={"segments_topic": topic}))
    store = CampaignStore(engine)
    store.save(parse_campaign({"name": "vip_welcome", "audience": {"segment_entry": "big_spenders"},
                               "action": {"kafka_topic": topic}}))
    store.launch("vip_welcome", T0)
    membership.full_recompute(engine, T0 + timedelta(minutes=1), ["big_spenders"])
    assert enqueue(engine, T0 + timedelta(minutes=2)) == 2
    assert dispatch_due(engine, Sender(settings, producer), T0 + timedelta(minutes=2)) == {"sent": 2}
    membership.full_recompute(engine, T0 + timedelta(minutes=3), ["big_spenders"])  # no new entry
    assert enqueue(engine, T0 + timedelta(minutes=4)) == 0
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    records = list(consumer)
    consumer.close()
    assert sorted(r.key.decode() for r in records) == ["rich-1", "rich-2"]
    assert all(dict(r.headers)["idempotency-key"] for r in records)
    assert {orjson.loads(r.value)["details"]["segment"] for r in records} == {"big_spenders"}
    assert {orjson.loads(r.value)["variant"] for r in records} == {"default"}  # the record names the variant
    store.pause("vip_welcome")
    assert [c for c in store.active() if c[0].name == "vip_welcome"] == []
