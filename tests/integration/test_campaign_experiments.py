"""Campaign variants, revenue lift and ROI on the real PostgreSQL, with a real signed-webhook receiver.

The report's per-user outcomes are held to an independent pandas computation over the same deliveries and
events (windows, duplicate order events, refunds, purchases outside the window, users with two
episodes), and its statistics to scipy/statsmodels on those outcomes."""

import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from scipy import stats
from sqlalchemy import select
from statsmodels.stats import proportion as sm_proportion

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_dispatch import CampaignStore, dispatch_due, enqueue
from spoor.campaigns.campaign_rules import in_holdout, variant_for
from spoor.campaigns.campaign_spec import CampaignDefinitionError, parse_campaign
from spoor.campaigns.webhook_delivery import Sender, verify
from spoor.cli.admin_api import create_api
from spoor.privacy.consent import set_consent
from spoor.settings import environment
from spoor.storage.segment_tables import CampaignDelivery
from spoor.topics import create_producer, create_segment_topics
from tests.support.campaign_settings import campaign_settings
from tests.support.local_stack import REPO
from tests.support.segments_data import put_events, put_trigger

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
SECRET = "test-webhook-secret"
TOKEN = "test-admin-token"
USERS = [f"ab-{i}" for i in range(600)]


@pytest.fixture(scope="module")
def settings(test_settings):
    return campaign_settings(test_settings, SECRET)


def definition(url: str, **extra) -> dict:
    return {"name": "cart_ab", "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": url},
            "holdout_percent": 25, "message": {"template": "cart-reminder"}, "cost_per_message": 0.05,
            "fixed_cost": 40, "variants": [{"name": "reminder", "weight": 1},
                                           {"name": "discount", "weight": 1, "message": {"template": "cart-10-off"},
                                            "cost_per_message": 0.25}], **extra}


@pytest.fixture(scope="module")
def campaign(engine, settings, receiver):
    """600 users abandon a cart at T0 (60 of them again 3 days later); one opted out; every message sent."""
    store = CampaignStore(engine)
    spec = parse_campaign(definition(receiver.url))
    store.save(spec)
    store.launch(spec.name, T0)
    set_consent(engine, USERS[0], opted_out=True)
    for user in USERS:
        put_trigger(engine, "cart_abandonment", user, "1", T0 + timedelta(minutes=1))
    for user in USERS[:60]:
        put_trigger(engine, "cart_abandonment", user, "2", T0 + timedelta(days=3))
    assert enqueue(engine, T0 + timedelta(days=3, minutes=1)) == len(USERS) + 60
    counts = dispatch_due(engine, Sender(settings), T0 + timedelta(days=3, minutes=2), limit=2_000)
    return spec, counts


def test_variants_are_assigned_per_user_named_in_the_signed_payload_and_stored(engine, campaign, receiver):
    spec, counts = campaign
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignDelivery).where(CampaignDelivery.campaign == "cart_ab")).all()
    held = {u for u in USERS[1:] if in_holdout("cart_ab", u, 25)}
    assert counts == {"sent": len([r for r in rows if r.status == "sent"])}  # the opted out: at enqueue
    for row in rows:
        if row.user_key == USERS[0]:
            assert (row.status, row.variant) == ("opted_out", None)
        elif row.user_key in held:
            assert (row.status, row.variant) == ("holdout", None)
        else:
            assert (row.status, row.variant) == ("sent", variant_for("cart_ab", row.user_key, spec.arms()))
    assert {r.variant for r in rows} == {None, "reminder", "discount"}
    templates = {"reminder": "cart-reminder", "discount": "cart-10-off"}
    sent = {(r.user_key, r.episode): r.variant for r in rows if r.status == "sent"}
    calls = {(c["payload"]["user_key"], c["payload"]["episode"]): c for c in receiver.calls
             if c["payload"]["campaign"] == "cart_ab"}
    assert set(calls) == set(sent)  # one call per treated episode, none for the holdout or the opted out
    for key, call in calls.items():
        assert call["payload"]["variant"] == sent[key]
        assert call["payload"]["message"] == {"template": templates[sent[key]]}
        assert verify(SECRET, call["headers"]["X-Spoor-Timestamp"], call["body"], call["headers"]["X-Spoor-Signature"])


def test_a_launched_campaign_keeps_its_variants(engine, campaign, receiver):
    store = CampaignStore(engine)
    for change in ({"variants": [{"name": "reminder", "weight": 3}, {"name": "discount", "weight": 1}]},
                   {"variants": [{"name": "reminder"}, {"name": "discount"}, {"name": "sms"}]}, {"variants": []}):
        with pytest.raises(CampaignDefinitionError, match="keeps its variants"):
            store.save(parse_campaign(definition(receiver.url, **change)))
    store.save(parse_campaign(definition(receiver.url, fixed_cost=60)))  # other fields may change
    assert store.get("cart_ab")[0].fixed_cost == 60
    store.save(parse_campaign(definition(receiver.url)))


def make_purchases(engine) -> pd.DataFrame:
    """Purchases and refunds: treated buyers more often, and ``discount`` with smaller baskets."""
    rng = random.Random(23)
    rows = []
    for i, user in enumerate(USERS):
        arm = "holdout" if in_holdout("cart_ab", user, 25) else variant_for(
            "cart_ab", user, parse_campaign(definition("http://x")).arms())
        rate = {"holdout": 0.10, "reminder": 0.16, "discount": 0.24}[arm]
        if rng.random() < rate:
            value = round(rng.lognormvariate(3.5, 1.0) * (0.8 if arm == "discount" else 1), 2)
            at = T0 + timedelta(days=rng.uniform(0.01, 6.9))
            rows.append({"event_id": f"buy-{user}", "user_key": user, "kind": "purchase", "order_id": f"o-{user}",
                         "revenue": value, "event_time": at})
            if i % 7 == 0:  # the same order sent twice (a retrying shop): counted once
                rows.append({**rows[-1], "event_id": f"buy-{user}-again", "event_time": at + timedelta(minutes=1)})
            if i % 11 == 0:  # a partial refund, after the window
                rows.append({"event_id": f"refund-{user}", "user_key": user, "kind": "refund", "order_id": f"o-{user}",
                             "revenue": round(value / 2, 2), "event_time": T0 + timedelta(days=12)})
        if i % 13 == 0:  # outside every window: before the trigger, after 7 days (unless a 2nd episode covers it)
            rows.append({"event_id": f"early-{user}", "user_key": user, "kind": "purchase", "order_id": f"e-{user}",
                         "revenue": 500.0, "event_time": T0 - timedelta(hours=1)})
            rows.append({"event_id": f"late-{user}", "user_key": user, "kind": "purchase", "order_id": None,
                         "revenue": 75.0, "event_time": T0 + timedelta(days=8)})
    rows.append({"event_id": "whale", "user_key": USERS[5], "kind": "purchase", "order_id": "whale",
                 "revenue": 25_000.0, "event_time": T0 + timedelta(days=1)})
    put_events(engine, [{"name": "Order Completed" if r["kind"] == "purchase" else "Order Refunded", **r}
                        for r in rows])
    return pd.DataFrame(rows)


def expected_outcomes(engine, events: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, user): episodes, sent, converted, net revenue, computed with pandas."""
    with engine.connect() as conn:
        d = pd.read_sql(select(CampaignDelivery.user_key, CampaignDelivery.status, CampaignDelivery.variant,
                               CampaignDelivery.triggered_at).where(CampaignDelivery.campaign == "cart_ab"), conn)
    d = d[d.status != "opted_out"].copy()
    d["arm"] = np.where(d.status == "holdout", "holdout", d.variant)
    purchases = events[events.kind == "purchase"].copy()
    purchases["order"] = purchases.order_id.fillna(purchases.event_id)
    joined = d.merge(purchases, on="user_key")
    joined = joined[(joined.event_time > joined.triggered_at)
                    & (joined.event_time <= joined.triggered_at + pd.Timedelta(days=7))]
    orders = joined.sort_values(["event_time", "event_id"]).drop_duplicates(["arm", "user_key", "order"])
    refunds = events[events.kind == "refund"].groupby("order_id").revenue.sum()
    orders = orders.assign(net=orders.revenue - orders.order_id.map(refunds).fillna(0))
    per_user = orders.groupby(["arm", "user_key"]).agg(orders=("order", "size"), revenue=("net", "sum"))
    users = d.groupby(["arm", "user_key"]).agg(episodes=("status", "size"),
                                               sent=("status", lambda s: (s == "sent").sum()))
    out = users.join(per_user).fillna({"orders": 0, "revenue": 0.0})
    return out.assign(converted=out.orders > 0).reset_index()


def test_report_per_variant_matches_pandas_scipy_and_statsmodels(engine, campaign):
    events = make_purchases(engine)
    expected = expected_outcomes(engine, events)
    report = campaign_dispatch.report(engine, "cart_ab")
    experiment = report["experiment"]
    hold = expected[expected.arm == "holdout"]
    assert experiment["holdout"]["users"] == len(hold) and experiment["holdout"]["converted"] == hold.converted.sum()
    assert experiment["holdout"]["revenue"] == pytest.approx(hold.revenue.sum())
    for variant in experiment["variants"]:
        mine = expected[expected.arm == variant["name"]]
        assert (variant["users"], variant["episodes"], variant["messages_sent"], variant["converted"]) == (
            len(mine), mine.episodes.sum(), mine.sent.sum(), mine.converted.sum())
        assert variant["revenue_per_user"] == pytest.approx(mine.revenue.mean())
        conversion = variant["conversion"]
        assert conversion["absolute_lift_ci"] == pytest.approx(list(sm_proportion.confint_proportions_2indep(
            mine.converted.sum(), len(mine), hold.converted.sum(), len(hold), method="wald")))
        assert conversion["p_value"] == pytest.approx(sm_proportion.test_proportions_2indep(
            mine.converted.sum(), len(mine), hold.converted.sum(), len(hold), method="wald").pvalue)
        pooled = np.concatenate([mine.revenue, hold.revenue])
        low = np.percentile(pooled[pooled < 0], 1) if (pooled < 0).any() else 0.0
        high = np.percentile(pooled[pooled > 0], 99)
        t, h = np.clip(mine.revenue, low, high), np.clip(hold.revenue, low, high)
        revenue = variant["revenue_per_user_lift"]
        assert revenue["winsorised_to"] == pytest.approx([low, high])
        assert revenue["absolute_lift"] == pytest.approx(t.mean() - h.mean())
        assert revenue["p_value"] == pytest.approx(stats.ttest_ind(t, h, equal_var=False).pvalue)
        cost = mine.sent.sum() * (0.25 if variant["name"] == "discount" else 0.05) + 40 * len(mine) / (
            len(expected) - len(hold))
        assert variant["cost"] == pytest.approx(cost)
        assert variant["roi"] == pytest.approx((len(mine) * (t.mean() - h.mean()) - cost) / cost)
    assert high < 25_000  # the whale is clipped
    assert max(v["revenue_per_user_lift"]["winsorised_to"][1] for v in experiment["variants"]) < 25_000
    # the episode-level fields of before are still there, unchanged in meaning
    assert report["treated"] == len([1 for v in experiment["variants"] for _ in range(v["messages_sent"])])
    assert report["holdout"] == experiment["holdout"]["episodes"]


def test_the_report_over_http_and_the_cli(engine, settings, campaign):
    app = create_api(settings.model_copy(update={"admin_token": TOKEN}), engine, clock=lambda: T0)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        body = client.get("/campaigns/cart_ab/experiment").json()
        assert body == {"campaign": "cart_ab", "conversion_window_days": 7,
                        **campaign_dispatch.report(engine, "cart_ab")["experiment"]}
        assert client.get("/campaigns/cart_ab/experiment", params={"days": 3}).json()["conversion_window_days"] == 3
        assert client.get("/campaigns/cart_ab/report").json()["experiment"]["variants"][1]["name"] == "discount"
        assert client.get("/campaigns/nope/experiment").status_code == 404
        for bad in ({"days": 0}, {"days": 91}, {"days": "x"}):
            assert client.get("/campaigns/cart_ab/experiment", params=bad).status_code == 422
        assert client.get("/campaigns/" + "x" * 65 + "/experiment").status_code == 422
        assert client.get("/campaigns/cart_ab/experiment", headers={"Authorization": "Bearer no"}).status_code == 401
    result = subprocess.run([sys.executable, "-m", "spoor.cli", "campaigns", "report", "cart_ab", "--text"], cwd=REPO,
                            env={**environment(settings), "PATH": ""}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("campaign cart_ab: conversion window 7 days")
    assert any(line.strip().startswith("reminder") for line in lines)
    assert any(line.strip().startswith("discount") for line in lines)
    assert sum("ROI" in line for line in lines) == 3  # two variants and the campaign overall


def test_kafka_records_name_the_variant_and_carry_its_message(engine, settings):
    topic = f"{settings.segments_topic}.ab"
    create_segment_topics(settings.model_copy(update={"segments_topic": topic}))
    store = CampaignStore(engine)
    spec = parse_campaign({"name": "kafka_ab", "audience": {"trigger": "browse_abandonment"},
                           "action": {"kafka_topic": topic}, "message": {"template": "a"},
                           "variants": [{"name": "a"}, {"name": "b", "message": {"template": "b"}}]})
    store.save(spec)
    store.launch(spec.name, T0)
    users = [f"kafka-ab-{i}" for i in range(30)]
    for user in users:
        put_trigger(engine, "browse_abandonment", user, "1", T0 + timedelta(minutes=1))
    producer = create_producer(settings, "test-campaign-experiments")
    try:
        assert enqueue(engine, T0 + timedelta(minutes=2)) == len(users)
        assert dispatch_due(engine, Sender(settings, producer), T0 + timedelta(minutes=2)) == {"sent": len(users)}
    finally:
        producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    records = [orjson.loads(r.value) for r in consumer]
    consumer.close()
    assert sorted(r["user_key"] for r in records) == sorted(users)
    for record in records:
        variant = variant_for("kafka_ab", record["user_key"], spec.arms())
        assert (record["variant"], record["message"]) == (variant, {"template": variant})
    assert {r["variant"] for r in records} == {"a", "b"}
