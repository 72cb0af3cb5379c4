"""Campaign recommendations without a database: the spec's field, the payload, what a delivery records."""

from datetime import datetime, timezone
from types import SimpleNamespace

import orjson
import pytest

from spoor.campaigns import campaign_recommendations
from spoor.campaigns.campaign_dispatch import _payload
from spoor.campaigns.campaign_recommendations import recommend
from spoor.campaigns.campaign_spec import CampaignDefinitionError, parse_campaign
from spoor.campaigns.webhook_delivery import sign, verify

BASE = {"name": "cart_rescue", "audience": {"trigger": "cart_abandonment"},
        "action": {"webhook": "https://crm.example/hook"}}
NOW = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
ITEMS = [{"product_id": "P2", "score": 1.25, "reason": "bought with P1"},
         {"product_id": "P9", "score": 0.0005, "reason": "popular in shoes"}]


def delivery(**fields) -> SimpleNamespace:
    row = {"id": 7, "user_key": "u1", "episode": "cart_abandonment:u1:1", "idempotency_key": "k" * 64,
           "triggered_at": NOW, "recommendations_k": None, "recommended_at": None, "recommendations": None,
           "variant": None}
    return SimpleNamespace(**{**row, **fields})


def test_recommendations_field_is_optional_and_round_trips():
    assert parse_campaign(BASE).recommendations is None
    spec = parse_campaign({**BASE, "recommendations": {"k": 5}})
    assert spec.recommendations.k == 5
    assert parse_campaign(spec.model_dump(mode="json")) == spec  # the stored definition reads back the same
    yaml = ("name: c\naudience: {trigger: win_back}\naction: {kafka_topic: crm.email}\n"
            "recommendations: {k: 20}\n")
    assert parse_campaign(yaml).recommendations.k == 20
    assert parse_campaign({**BASE, "recommendations": None}).recommendations is None


@pytest.mark.parametrize("value, message", [
    ({"k": 0}, "recommendations.k: k is a whole number from 1 to 20, not 0"),
    ({"k": 21}, "recommendations.k: k is a whole number from 1 to 20, not 21"),
    ({"k": -1}, "not -1"),
    ({"k": 10 ** 40}, "recommendations.k: k is a whole number from 1 to 20"),
    ({"k": "5"}, "not '5'"),
    ({"k": 5.0}, "not 5.0"),
    ({"k": 5.5}, "not 5.5"),
    ({"k": True}, "not True"),
    ({"k": None}, "not None"),
    ({"k": [5]}, "not \\[5\\]"),
    ({}, "recommendations.k: Field required"),
    ({"k": 5, "explain": True}, "recommendations.explain: Extra inputs are not permitted"),
    (5, "recommendations: recommendations is {k: 1..20}"),
    ("top5", "recommendations: recommendations is {k: 1..20}"),
    ([{"k": 5}], "recommendations: recommendations is {k: 1..20}"),
    (True, "recommendations: recommendations is {k: 1..20}"),
])
def test_hostile_recommendations_are_refused_with_a_clear_reason(value, message):
    with pytest.raises(CampaignDefinitionError, match=message):
        parse_campaign({**BASE, "recommendations": value})


def test_hostile_yaml_types_are_refused():
    for text in ("recommendations: {k: '3'}", "recommendations: {k: 3.0}", "recommendations: {k: yes}",
                 "recommendations: {k: 0x20}", "recommendations: [3]", "recommendations: {k: .inf}"):
        with pytest.raises(CampaignDefinitionError, match="recommendations"):
            parse_campaign(f"name: c\naudience: {{trigger: win_back}}\naction: {{webhook: 'http://x'}}\n{text}\n")


def test_payload_carries_the_list_only_when_the_episode_has_one():
    spec = parse_campaign({**BASE, "recommendations": {"k": 2}, "message": {"template": "t"}})
    plain = orjson.loads(_payload(spec, delivery(), {"cart_value": "1.00"}))
    assert "recommendations" not in plain
    body = _payload(spec, delivery(), {"cart_value": "1.00"}, ITEMS)
    payload = orjson.loads(body)
    assert payload["recommendations"] == ITEMS
    assert {k: v for k, v in payload.items() if k != "recommendations"} == plain  # nothing else changes
    assert orjson.loads(_payload(spec, delivery(), {}, []))["recommendations"] == []  # none found: said so
    # The signature covers the body, recommendations included.
    signature = sign("secret", 1_780_000_000, body)
    assert verify("secret", "1780000000", body, signature, now=1_780_000_000)
    assert not verify("secret", "1780000000", body.replace(b"P2", b"P3"), signature, now=1_780_000_000)


def test_a_delivery_computes_its_list_once(monkeypatch):
    calls = []

    def for_user(conn, user_key, k):
        calls.append((user_key, k))
        return {"user_key": user_key, "personal": True, "items": [{**item, "extra": 1} for item in ITEMS][:k]}

    monkeypatch.setattr(campaign_recommendations, "for_user", for_user)
    assert recommend(None, delivery(), NOW) == (None, {})  # the episode has no recommendations
    items, columns = recommend(None, delivery(recommendations_k=2), NOW)
    assert calls == [("u1", 2)]
    assert items == ITEMS  # exactly {product_id, score, reason}
    assert columns == {"recommended_at": NOW, "recommendations": ITEMS, "recommended_products": ["P2", "P9"]}
    # A retry sends what the first attempt sent, without asking again.
    stored = [{"score": 1.25, "reason": "bought with P1", "product_id": "P2"}]  # as jsonb gives it back
    kept = delivery(recommendations_k=2, recommended_at=NOW, recommendations=stored)
    assert recommend(None, kept, NOW) == (ITEMS[:1], {})
    assert list(recommend(None, kept, NOW)[0][0]) == ["product_id", "score", "reason"]  # the same bytes
    assert len(calls) == 1
