"""The segments/campaigns/users HTTP API on the real PostgreSQL (in-process ASGI client)."""

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from spoor.campaigns.campaign_dispatch import CampaignStore
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.cli.admin_api import create_api
from spoor.segments import SegmentsError
from tests.support.segments_data import profile, put_events, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def client(test_settings, engine):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "campaign_webhook_secret": "s"})
    app = create_api(settings, engine, clock=lambda: NOW)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_the_api_needs_a_token(test_settings, engine, client):
    with pytest.raises(SegmentsError, match="SPOOR_ADMIN_TOKEN"):
        create_api(test_settings.model_copy(update={"admin_token": ""}), engine)
    assert client.get("/healthz").status_code == 200
    assert client.get("/segments", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/segments", headers={"Authorization": ""}).status_code == 401
    spec = client.get("/openapi.json").json()
    assert "/segments/{name}/preview" in spec["paths"] and "/campaigns/{name}/report" in spec["paths"]


def test_define_preview_launch_pause_a_segment(engine, client):
    put_profiles(engine, [profile("api-1", NOW, orders=3, revenue="90", last_purchase_days=2),
                          profile("api-2", NOW, orders=1, revenue="10", last_purchase_days=5),
                          profile("api-3", NOW)])
    put_events(engine, [{"event_id": "api-e1", "user_key": "api-3", "kind": "cart_add", "name": "Product Added",
                         "event_time": NOW - timedelta(hours=1)}])
    bad = client.put("/segments/repeat", json={"where": "orders >= \"2\""})
    assert bad.status_code == 400 and "type mismatch: orders is a number" in bad.json()["detail"]
    unknown = client.put("/segments/repeat", json={"where": "ordrs >= 2"})
    assert unknown.status_code == 400 and "unknown field 'ordrs'" in unknown.json()["detail"]
    assert client.put("/segments/repeat", json={"name": "other", "where": "orders >= 2"}).status_code == 400
    saved = client.put("/segments/repeat", json={"description": "2+ orders", "where": "orders >= 2"})
    assert saved.status_code == 200 and saved.json()["status"] == "draft"
    preview = client.get("/segments/repeat/preview").json()
    assert preview["size"] == 1 and preview["sample"] == ["api-1"]
    adhoc = client.post("/segments/preview", json={"name": "adhoc", "where": {"any": [
        {"segment": "repeat"}, 'did "Product Added" in last 24h']}}).json()
    assert adhoc["size"] == 2 and adhoc["sample"] == ["api-1", "api-3"]
    launched = client.post("/segments/repeat/launch").json()
    assert launched["status"] == "active" and launched["entered"] == 1 and launched["members"] == 1
    assert [m["user_key"] for m in client.get("/segments/repeat/members").json()] == ["api-1"]
    sizes = client.get("/segments/repeat/sizes", params={
        "start": (NOW - timedelta(hours=1)).isoformat(), "end": NOW.isoformat(), "step_s": 1800}).json()
    assert [s["size"] for s in sizes] == [0, 0, 1]
    assert client.post("/segments/repeat/pause").json()["status"] == "paused"
    assert client.get("/segments/nope").status_code == 404


def test_campaigns_consent_and_user_view(engine, client):
    campaign = {"audience": {"segment_entry": "repeat"}, "action": {"webhook": "https://crm.example/hooks/spoor"},
                "holdout_percent": 10, "quiet_hours": {"start": "22:00", "end": "07:00"}}
    assert client.put("/campaigns/welcome", json={**campaign, "audience": {"segment_entry": "nope"}}).status_code == 400
    assert client.put("/campaigns/welcome", json={**campaign, "holdout_percent": 99}).status_code == 400
    assert client.put("/campaigns/welcome", json=campaign).json()["status"] == "draft"
    assert client.get("/campaigns/welcome/preview").json()["reachable_users"] == 1
    assert client.post("/campaigns/welcome/launch").json()["status"] == "active"
    assert client.post("/campaigns/welcome/pause").json()["status"] == "paused"
    report = client.get("/campaigns/welcome/report").json()
    assert report["treated"] == 0 and report["relative_lift"] is None
    assert client.put("/users/api-1/consent", json={"time_zone": "Mars/Olympus"}).status_code == 400
    consent = client.put("/users/api-1/consent", json={"opted_out": True, "time_zone": "Europe/Paris"}).json()
    assert consent["opted_out"] is True and consent["time_zone"] == "Europe/Paris"
    assert client.get("/campaigns/welcome/preview").json()["reachable_users"] == 0  # opted out
    user = client.get("/users/api-1").json()
    assert user["profile"]["orders"] == 3 and user["consent"]["opted_out"] is True
    assert user["segments"]["current"][0]["segment"] == "repeat"
    assert client.get("/users/nobody").status_code == 404


def test_a_campaign_webhook_to_an_internal_address_is_refused(test_settings, engine, client):
    campaign = {"audience": {"trigger": "cart_abandonment"}, "action": {"webhook": "http://127.0.0.1:9/hook"}}
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest/meta-data",
                "http://[::ffff:10.0.0.1]/hook"):
        refused = client.put("/campaigns/internal", json={**campaign, "action": {"webhook": url}})
        assert refused.status_code == 400, (url, refused.json())
        assert "SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES" in refused.json()["detail"]
    assert client.get("/campaigns/internal").status_code == 404
    # One stored before the rule (or by another way) is refused at launch.
    CampaignStore(engine).save(parse_campaign({**campaign, "name": "internal"}))
    launched = client.post("/campaigns/internal/launch")
    assert launched.status_code == 400 and "loopback" in launched.json()["detail"]
    assert client.get("/campaigns/internal").json()["status"] == "draft"
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "campaign_webhook_secret": "s",
                                                "webhook_allow_private_addresses": True})
    with TestClient(create_api(settings, engine, clock=lambda: NOW),
                    headers={"Authorization": f"Bearer {TOKEN}"}) as allowing:
        assert allowing.put("/campaigns/internal", json=campaign).status_code == 200
        assert allowing.post("/campaigns/internal/launch").json()["status"] == "active"
