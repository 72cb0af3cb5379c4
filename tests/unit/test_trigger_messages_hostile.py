"""The triggers topic is an input surface: whatever one message holds, it is a stored row or a
reject with its reason, never an exception or a row PostgreSQL would refuse (which failed the
batch's insert and had the campaigns runner retry it for ever)."""

from datetime import datetime, timezone

import orjson

from spoor.campaigns.trigger_intake import parse_triggers, trigger_message

AT = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"d": value}
    return value


def test_hostile_trigger_messages_are_rejected_one_by_one():
    good = trigger_message("cart_abandonment", "u1", "20261202T120000.000Z", AT)
    hostile = [
        None,
        b"",
        b"[" * 3000,
        trigger_message("cart_abandonment", "u\x002", "e", AT),
        trigger_message("cart_abandonment", "u3", "e", AT, {"note": "nul \x00 inside"}),
        trigger_message("cart_abandonment", "u4", "e", AT, deep(40)),
        orjson.dumps({"trigger_id": "x" * 5000}),
    ]
    rows, rejects = parse_triggers([good, *hostile])
    assert [row["user_key"] for row in rows] == ["u1"]
    assert [raw for raw, _field, _reason in rejects] == hostile
    assert all(reason for _raw, _field, reason in rejects)
