"""Campaign rules, holdout, signatures and lift statistics (pure)."""

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from spoor.campaigns.campaign_rules import decide, idempotency_key, in_holdout, quiet_until, retry_at
from spoor.campaigns.campaign_spec import CampaignDefinitionError, parse_campaign
from spoor.campaigns.lift import lift
from spoor.campaigns.webhook_delivery import sign, verify

SPEC = parse_campaign({
    "name": "cart_rescue", "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": "http://x/hook"},
    "delay": "30m", "frequency_cap": {"max": 1, "per": "7d"}, "quiet_hours": {"start": "21:00", "end": "08:00"},
    "expires_after": "12h", "holdout_percent": 20, "retry_backoff": "10s"})
PARIS = ZoneInfo("Europe/Paris")


def test_definition_errors_are_clear():
    with pytest.raises(CampaignDefinitionError, match="either {segment_entry"):
        parse_campaign({"name": "c", "audience": {}, "action": {"webhook": "http://x"}})
    with pytest.raises(CampaignDefinitionError, match="action"):
        parse_campaign({"name": "c", "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": "ftp://x"}})
    with pytest.raises(CampaignDefinitionError, match="quiet hours are 'HH:MM'"):
        parse_campaign({**SPEC.model_dump(mode="json"), "quiet_hours": {"start": "25:00", "end": "08:00"}})
    with pytest.raises(CampaignDefinitionError, match="holdout_percent"):
        parse_campaign({**SPEC.model_dump(mode="json"), "holdout_percent": 95})
    assert parse_campaign(SPEC.model_dump(mode="json")) == SPEC  # stored definitions read back the same
    assert SPEC.delay == 1800 and SPEC.expires_after == 43200 and SPEC.frequency_cap.per == 7 * 86400


def test_holdout_is_stable_and_close_to_the_percentage():
    users = [f"user-{i}" for i in range(20000)]
    held = [u for u in users if in_holdout("cart_rescue", u, 20)]
    assert held == [u for u in users if in_holdout("cart_rescue", u, 20)]
    assert 0.18 < len(held) / len(users) < 0.22
    assert not any(in_holdout("cart_rescue", u, 0) for u in users[:1000])
    other = {u for u in users if in_holdout("other_campaign", u, 20)}
    assert other != set(held)  # independent per campaign


def test_idempotency_key_is_per_campaign_user_episode():
    key = idempotency_key("c", "u", "cart_abandonment:u:1")
    assert key == idempotency_key("c", "u", "cart_abandonment:u:1")
    assert key != idempotency_key("c", "u", "cart_abandonment:u:2") != idempotency_key("d", "u", "x")


def test_quiet_hours_in_the_users_time_zone():
    # 20:30 UTC = 22:30 in Paris (summer): quiet until 08:00 Paris = 06:00 UTC next day.
    now = datetime(2026, 6, 1, 20, 30, tzinfo=timezone.utc)
    assert quiet_until(now, SPEC.quiet_hours, PARIS) == datetime(2026, 6, 2, 6, 0, tzinfo=timezone.utc)
    assert quiet_until(now, SPEC.quiet_hours, ZoneInfo("UTC")) is None  # 20:30 UTC is before 21:00
    early = datetime(2026, 6, 2, 3, 0, tzinfo=timezone.utc)  # 05:00 Paris
    assert quiet_until(early, SPEC.quiet_hours, PARIS) == datetime(2026, 6, 2, 6, 0, tzinfo=timezone.utc)


def test_decisions_consent_first_then_expiry_cap_quiet_hours():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    later = now + timedelta(hours=1)
    utc = ZoneInfo("UTC")
    assert decide(SPEC, now, expires_at=later, opted_out=True, sent_in_cap_window=0, tz=utc).status == "opted_out"
    assert decide(SPEC, later, expires_at=later, opted_out=False, sent_in_cap_window=0, tz=utc).status == "expired"
    assert decide(SPEC, now, expires_at=later, opted_out=False, sent_in_cap_window=1, tz=utc).status == "capped"
    assert decide(SPEC, now, expires_at=later, opted_out=False, sent_in_cap_window=0, tz=utc).action == "send"
    night = datetime(2026, 6, 1, 22, 0, tzinfo=timezone.utc)
    postponed = decide(SPEC, night, expires_at=night + timedelta(hours=12), opted_out=False,
                       sent_in_cap_window=0, tz=utc)
    assert postponed.action == "postpone" and postponed.until == datetime(2026, 6, 2, 8, 0, tzinfo=timezone.utc)
    # Quiet hours that outlast the expiry: it would arrive too late, so it expires.
    assert decide(SPEC, night, expires_at=night + timedelta(hours=2), opted_out=False, sent_in_cap_window=0,
                  tz=utc).status == "expired"


def test_backoff_doubles_and_is_bounded():
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert [(retry_at(SPEC, now, n) - now).total_seconds() for n in (1, 2, 3)] == [10, 20, 40]
    assert (retry_at(SPEC, now, 30) - now).total_seconds() == 3600


def test_signature_round_trip():
    body = b'{"a": 1}'
    signature = sign("secret", 1700000000, body)
    now = 1700000000 + 10
    assert signature.startswith("v1=") and verify("secret", "1700000000", body, signature, now=now)
    assert not verify("secret", "1700000000", body + b" ", signature, now=now)
    assert not verify("other", "1700000000", body, signature, now=now)


def test_a_signature_outside_the_timestamp_tolerance_is_refused():
    body = b'{"a": 1}'
    signed_at = 1700000000
    signature = sign("secret", signed_at, body)
    assert not verify("secret", str(signed_at), body, signature)  # signed in 2023: a replay now
    fresh = int(time.time())  # without now: the clock
    assert verify("secret", str(fresh), body, sign("secret", fresh, body))
    assert verify("secret", str(signed_at), body, signature, now=signed_at + 300)  # default tolerance 300 s
    assert verify("secret", str(signed_at), body, signature, now=signed_at - 300)  # the sender's clock ahead
    assert not verify("secret", str(signed_at), body, signature, now=signed_at + 301)  # a replay
    assert not verify("secret", str(signed_at), body, signature, now=signed_at - 301)
    assert verify("secret", str(signed_at), body, signature, tolerance_s=3600, now=signed_at + 3000)
    assert not verify("secret", str(signed_at), body, signature, tolerance_s=30, now=signed_at + 31)
    assert not verify("secret", "not-a-number", body, signature, now=signed_at)


def test_lift_and_confidence_intervals():
    result = lift(1000, 150, 1000, 100)
    assert result["treated_rate"] == 0.15 and result["holdout_rate"] == 0.10
    assert result["relative_lift"] == pytest.approx(0.5)
    low, high = result["absolute_lift_ci"]
    assert low == pytest.approx(0.05 - 1.96 * ((0.15 * 0.85 + 0.1 * 0.9) / 1000) ** 0.5, abs=1e-4)
    assert low < 0.05 < high and low > 0  # significant at this size
    rel_low, rel_high = result["relative_lift_ci"]
    assert 0 < rel_low < 0.5 < rel_high
    small = lift(20, 3, 20, 2)
    assert small["absolute_lift_ci"][0] < 0 < small["absolute_lift_ci"][1]  # not significant
    assert lift(10, 1, 0, 0)["relative_lift"] is None
    assert lift(10, 1, 10, 0)["relative_lift"] is None and lift(10, 1, 10, 0)["absolute_lift"] == 0.1


def test_trigger_messages_are_validated():
    from spoor.campaigns.trigger_intake import parse_triggers, trigger_message
    good = trigger_message("cart_abandonment", "u1", "7", datetime(2026, 6, 1, tzinfo=timezone.utc), {"v": 1})
    rows, rejects = parse_triggers([
        good,
        b"not json",
        trigger_message("teleport", "u1", "7", datetime(2026, 6, 1, tzinfo=timezone.utc)),
        good.replace(b'"trigger_id":"cart_abandonment:u1:7"', b'"trigger_id":"cart_abandonment:u2:7"'),
        trigger_message("win_back", "u1", "7", datetime(2026, 6, 1)),  # no time zone
    ])
    assert [r["trigger_id"] for r in rows] == ["cart_abandonment:u1:7"] and rows[0]["details"] == {"v": 1}
    assert len(rejects) == 4
    assert rejects[1][1] == "kind" and "trigger_id must be" in rejects[2][2] and "time zone" in rejects[3][2]
