"""What a variant changes in the message: its name in the body, its own message (else the campaign's)."""

from datetime import datetime, timezone
from types import SimpleNamespace

import orjson

from spoor.campaigns.campaign_dispatch import _payload
from spoor.campaigns.campaign_spec import parse_campaign

BASE = {"name": "cart_rescue", "audience": {"trigger": "cart_abandonment"},
        "action": {"webhook": "https://crm.example/hook"}, "message": {"template": "cart-reminder"}}


def delivery(variant: str | None) -> SimpleNamespace:
    return SimpleNamespace(id=7, user_key="u1", episode="cart_abandonment:u1:1", idempotency_key="k" * 64,
                           triggered_at=datetime(2026, 6, 1, tzinfo=timezone.utc), variant=variant)


def test_the_body_names_the_variant_and_carries_its_message():
    spec = parse_campaign({**BASE, "variants": [{"name": "reminder"},
                                                {"name": "discount", "message": {"template": "cart-10-off"}}]})
    reminder = orjson.loads(_payload(spec, delivery("reminder"), {}))
    discount = orjson.loads(_payload(spec, delivery("discount"), {}))
    assert (reminder["variant"], reminder["message"]) == ("reminder", {"template": "cart-reminder"})
    assert (discount["variant"], discount["message"]) == ("discount", {"template": "cart-10-off"})
    assert {k: v for k, v in reminder.items() if k not in ("variant", "message")} == \
        {k: v for k, v in discount.items() if k not in ("variant", "message")}


def test_a_campaign_without_variants_sends_as_before_under_the_implicit_default():
    body = orjson.loads(_payload(parse_campaign(BASE), delivery(None), {"cart_value": "1.00"}))
    assert body["variant"] == "default" and body["message"] == {"template": "cart-reminder"}
    assert set(body) == {"campaign", "variant", "user_key", "episode", "triggered_at", "delivery_id",
                         "idempotency_key", "audience", "details", "message"}


def test_a_row_enqueued_before_variants_counts_in_the_first_variant():
    spec = parse_campaign({**BASE, "variants": [{"name": "a"}, {"name": "b"}]})
    assert orjson.loads(_payload(spec, delivery(None), {}))["variant"] == "a"
