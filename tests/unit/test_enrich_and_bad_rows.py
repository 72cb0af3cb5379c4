"""Edge enrichment, the collector's intake, bad rows v2, and the SDK's canonical events. Pure, no broker."""

from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest
from spoor_sdk.kafka import canonical_event
from spoor_sdk.messages import build

from spoor.bad_rows import bad_row, dead_letter_row
from spoor.events import Event, decode_record
from spoor.ingest.enrich import anonymize_ip, enrichment, parse_user_agent
from spoor.ingest.intake import Intake, RequestFacts
from spoor.ingest.normalize import InvalidEvent, normalize

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.1 Mobile/15E148 Safari/604.1")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize("raw, anonymised", [
    ("203.0.113.77", "203.0.113.0"),
    (" 10.1.2.3 ", "10.1.2.0"),
    ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
    ("::ffff:198.51.100.9", "198.51.100.0"),
    ("not an ip", None), ("", None), (None, None), (42, None),
])
def test_ip_addresses_lose_their_last_octet_or_80_bits(raw, anonymised):
    assert anonymize_ip(raw) == anonymised


def test_user_agents_become_browser_os_device_and_bots_are_flagged():
    assert parse_user_agent(IPHONE) == {"browser": "Mobile Safari", "browser_version": "17.1", "os": "iOS",
                                        "os_version": "17.1", "device": "iPhone", "is_bot": False}
    chrome = parse_user_agent(CHROME)
    assert (chrome["browser"], chrome["os"], chrome["is_bot"]) == ("Chrome", "Windows", False)
    assert parse_user_agent(GOOGLEBOT)["is_bot"] is True
    assert parse_user_agent("curl/8.5.0")["is_bot"] is False
    hits = parse_user_agent.cache_info().hits
    parse_user_agent(CHROME)
    assert parse_user_agent.cache_info().hits == hits + 1  # parsed once, then served from the LRU cache


def test_the_message_context_wins_over_the_request():
    fields = enrichment({"userAgent": IPHONE, "ip": "198.51.100.23"}, CHROME, "203.0.113.5")
    assert (fields["device"], fields["anonymized_ip"]) == ("iPhone", "198.51.100.0")
    fields = enrichment({"ip": "garbage"}, CHROME, "203.0.113.5")
    assert (fields["browser"], fields["anonymized_ip"]) == ("Chrome", "203.0.113.0")
    assert enrichment(None, None, None) == {}


def intake(max_event_bytes: int = 32 * 1024) -> Intake:
    return Intake("events", "dlq", 4, max_event_bytes)


def test_intake_enriches_events_and_keeps_raw_ips_out_of_every_record():
    facts = RequestFacts(received_at=NOW, source="web", user_agent=CHROME, peer_ip="203.0.113.99",
                         context={"ip": "198.51.100.200"})
    messages = [{"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": "ok"},
                {"type": "track", "userId": "u1", "event": "Product Added", "properties": {"price": -1},
                 "messageId": "bad"}]
    records, rejected, accepted = intake().records(messages, facts)
    assert rejected == [{"index": 1, "field": "properties.price", "reason": "must be a finite number >= 0"}]
    assert [(e.source, e.browser, e.anonymized_ip, e.is_bot) for e in accepted] == [
        ("web", "Chrome", "198.51.100.0", False)]
    everything = b"".join(value for _, _, _, value in records)
    assert b"198.51.100.200" not in everything and b"203.0.113.99" not in everything
    dead = dead_letter_row("dlq/0/0", next(v for topic, _, _, v in records if topic == "dlq"))
    assert dead["payload"]["context"]["ip"] == "198.51.100.0"
    assert dead["request"] == {"endpoint": "batch", "user_agent": CHROME, "ip": "203.0.113.0"}
    assert [e.event_id for r in records if r[0] == "events" for e in decode_record(r[3])] == ["ok"]


def test_oversized_events_are_size_violations():
    big = {"type": "track", "userId": "u", "event": "X", "properties": {"blob": "x" * 400}}
    records, rejected, _ = intake(max_event_bytes=256).records([big], RequestFacts(received_at=NOW, source="web"))
    row = dead_letter_row("dlq/0/1", records[0][3])
    assert rejected[0]["field"] == "$" and row["failure_type"] == "size_violation"


def test_bad_rows_are_versioned_and_version_1_is_still_read():
    row = dead_letter_row("id", bad_row("collector", "userId", "userId or anonymousId is required",
                                        {"type": "track"}, "web", NOW, request={"endpoint": "track"}))
    assert (row["schema_version"], row["failure_type"], row["messages"], row["field"], row["request"]) == (
        2, "schema_violation", [{"field": "userId", "reason": "userId or anonymousId is required"}], "userId",
        {"endpoint": "track"})
    v1 = orjson.dumps({"schema": "spoor.bad_row/1", "processor": "worker", "failure": {"field": "kind",
                       "reason": "bad"}, "source": None, "received_at": NOW.isoformat(), "payload": {"a": 1}})
    old = dead_letter_row("id1", v1)
    assert (old["schema_version"], old["field"], old["reason"], old["messages"]) == (
        1, "kind", "bad", [{"field": "kind", "reason": "bad"}])
    assert dead_letter_row("id2", b"\x00garbage")["failure_type"] == "foreign_record"
    assert dead_letter_row("id3", bad_row("worker", "$", "not JSON", b"{oops"))["failure_type"] == "parse_error"


def test_nul_characters_are_refused_in_events_and_replaced_in_bad_rows():
    with pytest.raises(InvalidEvent) as err:
        normalize({"type": "track", "userId": "u\x00", "event": "X"}, received_at=NOW, source="web")
    assert "NUL" in err.value.reason
    row = dead_letter_row("id", bad_row("collector", "$", "NUL", {"userId": "u\x00"}))
    assert row["payload"] == {"userId": "u\ufffd"}


@pytest.mark.parametrize("timestamp, sent_at", [("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
                                                ("1900-01-01T00:00:00Z", None)])
def test_event_times_out_of_range_are_invalid_not_crashes(timestamp, sent_at):
    message = {"type": "track", "userId": "u", "event": "X", "timestamp": timestamp}
    if sent_at:
        message["sentAt"] = sent_at
    with pytest.raises(InvalidEvent) as err:
        normalize(message, received_at=NOW, source="web")
    assert err.value.field == "timestamp"


SDK_MESSAGES = [
    build("track", {"event": "Product Viewed", "properties": {"product_id": 7, "price": "9.99", "category": "Shoes"}},
          user_id="u1"),
    build("track", {"event": "product_added", "properties": {"sku": "S1", "price": 5}}, anonymous_id="a1"),
    build("track", {"event": "Order Completed", "properties": {
        "order_id": "o1", "currency": "eur", "products": [{"product_id": "P1", "price": "10", "quantity": 2}]}},
        user_id="u1"),
    build("page", {"name": "Home", "properties": {"url": "https://shop.example/"}}, user_id="u1"),
    build("screen", {"name": "Cart"}, user_id="u1"),
    build("identify", {"traits": {"plan": "pro"}}, user_id="u1"),
    build("track", {"event": "Newsletter Signup", "properties": {"quantity": 3}}, user_id="u1"),
]


@pytest.mark.parametrize("message", SDK_MESSAGES, ids=lambda m: m.get("event") or m["type"])
def test_the_sdk_kafka_transport_produces_what_the_collector_would(message):
    wire = orjson.loads(orjson.dumps(message))
    received = datetime.now(timezone.utc)  # the SDK stamps messages now; the edge refuses times after the receipt
    from_sdk = Event.model_validate(canonical_event(wire, received, "backend"))
    from_collector = normalize(wire, received_at=received, source="backend")
    assert from_sdk == from_collector
    if wire.get("event") == "Order Completed":
        assert from_sdk.revenue == Decimal("20") and from_sdk.currency == "EUR"


def test_replay_judges_collector_payloads_again_and_worker_events_as_canonical_events():
    from spoor.ingest.dead_letter_replay import replay_records
    def row(id_, processor, payload, failure_type="schema_violation", request=None):
        return {"id": id_, "processor": processor, "failure_type": failure_type, "payload": payload,
                "source": "web", "received_at": NOW, "request": request}
    rows = [
        row("c1", "collector", {"userId": "u", "event": "Product Viewed"}, request={"endpoint": "track",
                                                                                   "user_agent": IPHONE}),
        row("c2", "collector", {"type": "track", "event": "X"}),
        row("w1", "worker", {"event_id": "w-1", "kind": "custom", "name": "X", "user_key": "u",
                             "event_time": NOW.isoformat(), "received_at": NOW.isoformat()}),
        row("w2", "worker", {"raw": "not json"}, failure_type="parse_error"),
        row("f1", "unknown", {"raw": "?"}, failure_type="foreign_record"),
    ]
    records, report = replay_records(rows, intake(), "events", "dlq", 4)
    assert (report.replayed, report.accepted, report.invalid_again, report.skipped) == (4, 2, 2, 1)
    assert report.replayed_ids == ["c1", "c2", "w1", "w2"]
    events = [e for topic, _, _, value in records if topic == "events" for e in decode_record(value)]
    replayed = next(e for e in events if e.kind == "product_view")
    # No messageId: one derived from the dead letter's id, so a second replay is the same event.
    assert replayed.event_id.startswith("replay-") and replayed.received_at == NOW and replayed.device == "iPhone"
    assert replay_records(rows[:1], intake(), "events", "dlq", 4)[0] == records[:1]
    again = [dead_letter_row("x", value) for topic, _, _, value in records if topic == "dlq"]
    assert sorted(d["replay_of"] for d in again) == ["c2", "w2"]
