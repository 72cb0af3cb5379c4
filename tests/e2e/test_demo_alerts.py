"""`make demo`'s path on private processes (collector, worker, segments and campaigns runners): the demo
traffic's checkout outage fires the checkout alert, which resolves when orders come back; the cart
abandoners get a campaign with two variants and a holdout through signed webhooks, some come back and buy,
and the summary read from PostgreSQL shows it all."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from spoor.cli.demo import print_summary, run_demo
from spoor.cli.demo_alerts import WARM_UP_MINUTES
from spoor.storage.segment_tables import CampaignDelivery
from tests.support.local_stack import free_port, spoor_commands

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def settings(test_settings):
    """The runners' and the demo's: a webhook secret, webhooks to this machine allowed (as deploy/stack.sh)."""
    return test_settings.model_copy(update={
        "campaign_webhook_secret": "demo-test-secret", "webhook_allow_private_addresses": True,
        "segments_poll_s": 0.5, "campaigns_poll_s": 0.5, "segments_web_port": free_port(),
        "campaigns_web_port": free_port()})


@pytest.fixture(scope="module")
def runners(settings, tmp_path_factory):
    """`spoor segments run` and `spoor campaigns run`, as make up starts them."""
    with spoor_commands(settings, tmp_path_factory.mktemp("runner-logs"), [("segments", "run"), ("campaigns", "run")],
                        [settings.segments_web_port, settings.campaigns_web_port]) as log_dir:
        yield log_dir


def test_demo_shows_the_alert_the_segments_and_the_campaign(collector, start_process, engine, write_key, settings,
                                                            runners, capsys):
    start_process("worker")
    result = run_demo(engine, collector, write_key, users=100, timeout_s=120, settings=settings)
    checkout = [a for a in result["alerts"] if a["rule_id"] == "checkout-conversion-collapse"]
    assert [a["status"] for a in checkout] == ["resolved"], result["alerts"]
    story = result["story"]
    [alert] = checkout
    assert story.outage_start < alert["fired_at"] <= story.outage_end
    assert story.outage_end < alert["resolved_at"] <= story.outage_end + (alert["fired_at"] - alert["started_at"]) * 4
    assert alert["evidence"]["worst"]["observed"] == 0.0  # no shopper who carted could order

    # The campaign: every treated episode sent once, signed and verified; the holdout got nothing.
    campaign = result["campaign"]
    experiment = campaign["experiment"]
    sent = {v["name"]: v["messages_sent"] for v in experiment["variants"]}
    assert set(sent) == {"reminder", "discount"} and min(sent.values()) >= 10, campaign["deliveries_by_status"]
    assert experiment["holdout"]["episodes"] >= 5
    assert set(campaign["deliveries_by_status"]) == {"sent", "holdout"}, campaign["deliveries_by_status"]
    assert campaign["receiver"] == {"verified": sum(sent.values()), "refused": 0}
    with engine.connect() as conn:
        stored = dict(conn.execute(select(CampaignDelivery.variant, func.count()).where(
            CampaignDelivery.campaign == campaign["campaign"], CampaignDelivery.status == "sent")
            .group_by(CampaignDelivery.variant)).all())
    assert stored == sent
    # The shoppers who came back went through collector, Kafka, worker and PostgreSQL into the report.
    converted = {v["name"]: v["converted"] for v in experiment["variants"]} | {
        "holdout": experiment["holdout"]["converted"]}
    assert converted == {arm: campaign["returned"].get(arm, 0) for arm in converted}
    for variant in experiment["variants"]:
        assert variant["conversion"]["absolute_lift_ci"] is not None and variant["roi"] is not None
    segments = result["segments"]
    assert segments["sizes"]["cart_abandoners"] > 0, segments  # "current" too, unless the runner is slow
    # Attribution: every order's revenue, under each model, credited to the channels shoppers came by
    # (the demo's UTM and referrer contexts, and the campaign's link for those it brought back).
    by_channel = result["attribution"]
    assert by_channel is not None, "the segments runner did not attribute the demo's orders"
    with engine.connect() as conn:
        revenue = conn.execute(text("SELECT sum(revenue) FROM events WHERE kind = 'purchase' AND event_time >= "
                                    ":since"), {"since": story.start - timedelta(minutes=WARM_UP_MINUTES)}).scalar()
    for model in ("first_touch", "last_touch", "linear", "position_based"):
        assert sum(channel.get(model, 0) for channel in by_channel.values()) == revenue, (model, by_channel)
    assert {"google / cpc", "newsletter / email", "direct"} <= set(by_channel), by_channel
    if any(campaign["returned"].get(v, 0) for v in ("reminder", "discount")):
        assert by_channel["cart_rescue / email"]["last_touch"] > 0, by_channel

    print_summary(result)
    out = capsys.readouterr().out
    assert "checkout-conversion-collapse (global): fired" in out and "resolved" in out
    assert f"cart_abandoners {segments['sizes']['cart_abandoners']:,}" in out
    assert f"sent per variant: reminder {sent['reminder']}, discount {sent['discount']}" in out
    assert f"receiver verified {sum(sent.values())} signatures, refused 0" in out
    lifts = [line for line in out.splitlines() if line.strip().startswith("conversion lift")]
    assert len(lifts) == 3 and all("] (95%)" in line for line in lifts)  # two variants and overall
    assert sum(" ROI " in line for line in out.splitlines()) == 3
    # The shoppers' interests reached PostgreSQL: the summary shows lists made of them, not only fallbacks.
    samples = result["recommendations"]
    assert samples["user"]["personal"] and any(" with " in item["reason"] or item["reason"] == "buy again"
                                              for item in samples["user"]["items"]), samples
    assert any(item["reason"].startswith(("bought with", "viewed with")) for item in samples["product"]["items"])
    assert "recommended for" in out and "also bought with" in out
    assert "revenue by channel" in out and "google / cpc" in out
