"""The collector's intake on hostile messages: one message's failure is that message's bad row (issue 18).

Each test names what the code before it did. Every bad row must decode, be bounded, and keep no
credential; the valid messages of the same request must still become events.
"""

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from spoor.bad_rows import dead_letter_row
from spoor.events import decode_record
from spoor.ingest import intake
from spoor.ingest.dead_letter_replay import replay_records
from spoor.ingest.intake import DEAD_LETTER_BUDGET_BYTES, PROCESSING_ERROR, Intake, RequestFacts, is_summary, parse_json

NOW = datetime.now(timezone.utc).replace(microsecond=0)
KAFKA_RECORD_LIMIT = 1_000_000  # the broker's default message.max.bytes, rounded down
INTAKE = Intake("events", "dlq", 4, 32 * 1024)


def facts(**overrides) -> RequestFacts:
    return RequestFacts(**{"received_at": NOW, "source": "web", "user_agent": "curl/8", "peer_ip": "192.0.2.1",
                           **overrides})


def valid(n: int) -> dict:
    return {"type": "track", "userId": f"u{n}", "event": "Product Viewed", "messageId": f"ok-{n}"}


def deep(levels: int) -> dict:
    """A message whose properties nest ``levels`` lists deep, parsed by orjson as the collector does."""
    raw = b'{"type":"track","userId":"deep","event":"X","messageId":"deep-1","writeKey":"secret-key",' \
          b'"properties":{"a":' + b"[" * levels + b"]" * levels + b"}}"
    return orjson.loads(raw)


def split(records) -> tuple[list, list[dict]]:
    """Events on the events topic, and the decoded dead letters (each one also checked for its bounds)."""
    events = [e for topic, _, _, value in records if topic == "events" for e in decode_record(value)]
    dead = []
    for topic, _, _, value in records:
        if topic == "dlq":
            assert len(value) < KAFKA_RECORD_LIMIT
            orjson.loads(value)  # every bad row is plain JSON
            dead.append(dead_letter_row("dlq/0/0", value))
    return events, dead


@pytest.mark.parametrize("levels", [40, 254, 300, 1020])
def test_json_nested_too_deep_is_that_messages_bad_row_and_the_batch_goes_on(levels):
    """Before: orjson.dumps raised 'Recursion limit reached' past 254 levels, so the whole request was
    a 500 and its valid events were lost; between 32 and 254 the message was accepted as it was."""
    records, rejected, accepted = INTAKE.records([valid(0), deep(levels), valid(2)], facts())
    assert [e.event_id for e in accepted] == ["ok-0", "ok-2"]
    assert [(r["index"], r["field"].split(".")[:2], r["reason"]) for r in rejected] == [
        (1, ["properties", "a"], "JSON nested deeper than 32 levels (max_nesting_depth)")]
    events, [dead] = split(records)
    assert sorted(e.event_id for e in events) == ["ok-0", "ok-2"]
    assert dead["failure_type"] == "size_violation" and dead["field"] == rejected[0]["field"]
    # The dead letter keeps a summary, never the deep structure, and no credential.
    payload = dead["payload"]
    assert payload["truncated"] is True and "max_nesting_depth" in payload["reason"]
    assert payload["keys"] == ["type", "userId", "event", "messageId", "properties"]
    assert payload["messageId"] == "deep-1" and b"secret-key" not in orjson.dumps(dead)
    assert is_summary(payload)


def test_the_nesting_limit_is_a_setting_and_its_edge_is_accepted():
    at_limit = deep(30)  # message, properties, then 30 lists: 32 levels
    assert INTAKE.records([at_limit], facts())[1] == []
    assert INTAKE.records([deep(31)], facts())[1][0]["reason"].startswith("JSON nested deeper than 32")
    strict = Intake("events", "dlq", 4, 32 * 1024, max_nesting_depth=5)
    assert strict.records([deep(3)], facts())[1] == []
    assert "deeper than 5 levels" in strict.records([deep(4)], facts())[1][0]["reason"]
    # A batch's context counts one level deeper, as each message's context.
    context = {"a": {"b": [[1]]}}  # 4 levels, 5 as a message's context
    assert strict.records([valid(0)], facts(context=context))[1] == []
    nested = strict.records([valid(0), {**valid(1), "context": {}}], facts(context={"a": {"b": [[[1]]]}}))[1]
    assert [(r["index"], r["field"]) for r in nested] == [(0, "context.a.b.0.0")]


def test_a_message_that_raises_unexpectedly_is_a_processing_error_not_a_failed_request(monkeypatch):
    """Before: any exception but InvalidEvent escaped Intake.records, and the collector answered 500."""
    real = intake.enrichment

    def flaky(context, user_agent, peer_ip):
        if isinstance(context, dict) and context.get("boom"):
            raise RuntimeError("enrichment broke on this one")
        return real(context, user_agent, peer_ip)

    monkeypatch.setattr(intake, "enrichment", flaky)
    messages = [valid(0), {**valid(1), "context": {"boom": True}, "writeKey": "secret-key"}, valid(2)]
    records, rejected, accepted = INTAKE.records(messages, facts())
    assert [e.event_id for e in accepted] == ["ok-0", "ok-2"]
    assert rejected == [{"index": 1, "field": "$", "reason": "RuntimeError: enrichment broke on this one"}]
    events, [dead] = split(records)
    assert len(events) == 2
    assert (dead["failure_type"], dead["reason"]) == (PROCESSING_ERROR, "RuntimeError: enrichment broke on this one")
    assert dead["payload"] == {k: v for k, v in messages[1].items() if k != "writeKey"}


def test_an_event_that_cannot_be_encoded_is_a_processing_error_too(monkeypatch):
    real = intake.encode_events

    def picky(events):
        if any(e.user_key == "u1" for e in events):
            raise ValueError("cannot encode u1")
        return real(events)

    monkeypatch.setattr(intake, "encode_events", picky)
    records, rejected, accepted = Intake("events", "dlq", 1, 32 * 1024).records([valid(0), valid(1), valid(2)],
                                                                                facts())
    assert [r["index"] for r in rejected] == [1] and [e.event_id for e in accepted] == ["ok-0", "ok-2"]
    events, [dead] = split(records)
    assert [e.event_id for e in events] == ["ok-0", "ok-2"] and dead["failure_type"] == PROCESSING_ERROR


@pytest.mark.parametrize("odd, field, reason", [
    ({"properties": {"n": 10 ** 30}}, "properties.n", "an integer must fit in 64 bits"),
    ({"userId": 2 ** 64}, "userId", "an integer must fit in 64 bits"),
    ({"properties": {"raw": b"bytes"}}, "properties.raw", "not a JSON value: bytes"),
    ({"properties": {"x": object()}}, "properties.x", "not a JSON value: object"),
    ({"properties": {1: "int key"}}, "properties", "an object key must be a string, got int"),
    ({"event": "Product Added", "properties": {"quantity": float("nan")}}, "properties.quantity",
     "must be a whole number"),
])
def test_python_values_json_cannot_carry_are_bad_rows(odd, field, reason):
    """What a replayed PostgreSQL row or a direct caller may hold. Before: TypeError out of orjson.dumps (a 500)."""
    records, rejected, accepted = INTAKE.records([valid(0), {**valid(1), **odd}], facts())
    assert [e.event_id for e in accepted] == ["ok-0"]
    assert [(r["index"], r["field"], r["reason"]) for r in rejected] == [(1, field, reason)]
    _, [dead] = split(records)
    assert dead["payload"]["messageId"] == "ok-1"  # the message is kept, with the odd value as text


def test_lone_surrogates_become_replacement_characters():
    """Before: orjson.dumps raised on a lone surrogate (a 500). Now it reads as U+FFFD, as a browser's UTF-8 would."""
    message = {**valid(1), "event": "Product \ud83d", "properties": {"title\udc00": "cut \ud83d"}}
    records, rejected, accepted = INTAKE.records([valid(0), message], facts())
    assert rejected == [] and accepted[1].name == "Product \ufffd"
    # In a rejected message too, and in the reason and field that quote it.
    odd_price = {**message, "properties": {"price\ud800": {"x": "\ud800"}, "price": "\ud800"}}
    records, rejected, _ = INTAKE.records([odd_price], facts())
    assert rejected[0]["field"] == "properties.price" and "\ud800" not in orjson.dumps(rejected).decode()
    _, [dead] = split(records)
    assert dead["payload"]["properties"] == {"price\ufffd": {"x": "\ufffd"}, "price": "\ufffd"}


def test_request_bodies_with_lone_surrogate_escapes_are_read_not_refused():
    """JSON.stringify writes an emoji cut in half as "\\ud83d"; orjson refused the body, so one such title
    cost every message of the batch (a 400 for all of them)."""
    body = parse_json(b'{"batch": [{"type": "page", "name": "Caf\\ud83d", "userId": "u", "n": 18446744073709551616},'
                      b' {"\\udc00": "\\ud800\\udc00"}]}')
    assert body == {"batch": [{"type": "page", "name": "Caf\ufffd", "userId": "u", "n": 1.8446744073709552e19},
                              {"\ufffd": "\U00010000"}]}
    for broken in (b'{"a": "\\ud800"', b'["\\ud800", NaN]', b'["\\ud800", 1e400]', b'{"a": 1'):
        with pytest.raises(orjson.JSONDecodeError):
            parse_json(broken)


def test_far_future_times_are_rejected_at_the_edge():
    """Before: a timestamp without sentAt was trusted as is, so one request could claim the year 2099."""
    messages = [valid(0), {**valid(1), "timestamp": "2099-01-01T00:00:00Z"},
                {**valid(2), "timestamp": (NOW + timedelta(seconds=290)).isoformat()}]
    records, rejected, accepted = INTAKE.records(messages, facts())
    assert [e.event_id for e in accepted] == ["ok-0", "ok-2"]
    assert [(r["index"], r["field"]) for r in rejected] == [(1, "timestamp")]
    assert "at most 300 s after its receipt" in rejected[0]["reason"]
    lenient = Intake("events", "dlq", 4, 32 * 1024, max_future_event_s=3600)
    assert lenient.records([{**valid(3), "timestamp": (NOW + timedelta(minutes=30)).isoformat()}], facts())[1] == []


def test_a_retried_request_without_message_ids_gets_the_same_ids():
    """Before: each attempt drew new uuid4s, so a retried batch was counted twice."""
    batch = [{"type": "track", "userId": "u", "event": "Product Viewed", "properties": {"product_id": "P1"},
              "timestamp": (NOW - timedelta(seconds=5)).isoformat()},
             {"type": "track", "userId": "u", "event": "Product Added", "properties": {"product_id": "P1"}},
             {"type": "track", "userId": "u", "event": "Product Added", "properties": {"product_id": "P1"}}]
    first = INTAKE.records(batch, facts(sent_at=NOW.isoformat(), context={"library": {"name": "x"}}))[2]
    retry = INTAKE.records([{**m, "sentAt": (NOW + timedelta(seconds=29)).isoformat(), "writeKey": "k"}
                            for m in batch],
                           facts(received_at=NOW + timedelta(seconds=30),
                                 sent_at=(NOW + timedelta(seconds=30)).isoformat(),
                                 context={"library": {"name": "x"}}, peer_ip="198.51.100.7"))[2]
    assert [e.event_id for e in first] == [e.event_id for e in retry]
    assert len({e.event_id for e in first}) == 3  # two identical adds in one request are two events


def test_credentials_never_reach_a_dead_letter():
    """Before: a rejected single-message request (POST /v1/track {"writeKey": ...}) stored its key."""
    message = {"writeKey": "secret-key", "userId": "u", "event": "X", "properties": {"price": "free"},
               "context": {"ip": "203.0.113.77"}}
    records, rejected, _ = INTAKE.records([message], facts(endpoint="track"))
    assert rejected[0]["field"] == "properties.price"
    stored = b"".join(value for _, _, _, value in records)
    assert b"secret-key" not in stored and b"203.0.113.77" not in stored
    _, [dead] = split(records)
    assert "writeKey" not in dead["payload"] and dead["payload"]["context"]["ip"] == "203.0.113.0"


def test_dead_letters_are_bounded_per_message_and_per_request():
    """Before: a batch context merged into each of 2,500 messages made each one's dead letter carry it
    whole: a gigabyte of dead letters for one 512 KB request (and a 503 once Kafka refused them)."""
    context = {"blob": "x" * 100_000}  # under a dead letter's own bound (128 KiB here)
    messages = [{"type": "track", "userId": f"u{i}", "event": "X"} for i in range(60)]
    records, rejected, accepted = INTAKE.records(messages, facts(context=context))
    assert len(rejected) == 60 and not accepted
    assert {r["reason"] for r in rejected} == {"an event may be at most 32768 bytes"}
    _, dead = split(records)
    kept = [d for d in dead if not is_summary(d["payload"])]
    assert 30 < len(kept) < 60 and all(d["payload"]["context"] == context for d in kept)
    assert sum(len(orjson.dumps(d["payload"])) for d in kept) <= DEAD_LETTER_BUDGET_BYTES
    summaries = [d["payload"] for d in dead if d not in kept]
    assert all(p["keys"] == ["type", "userId", "event", "context"] and "budget" in p["reason"] for p in summaries)
    assert sum(len(value) for _, _, _, value in records) < DEAD_LETTER_BUDGET_BYTES + 60 * 2048
    # One message too big to keep: a summary (with its size), not a record Kafka refuses.
    huge = {**valid(1), "properties": {"blob": "y" * 2_000_000}}
    records, rejected, _ = INTAKE.records([huge], facts())
    _, [dead] = split(records)
    assert dead["payload"]["truncated"] is True and dead["payload"]["bytes"] > 2_000_000


def test_the_size_of_a_message_with_the_batch_context_is_exact():
    context = {"page": {"url": "https://shop.example/"}, "library": {"name": "x"}}
    for message in ({}, {"type": "track"}, valid(0)):
        merged = {**message, "context": context}
        size = len(orjson.dumps(merged))
        exact = Intake("events", "dlq", 4, size)
        below = Intake("events", "dlq", 4, size - 1)
        assert "bytes" not in str(exact.records([message], facts(context=context))[1])
        refused = below.records([message], facts(context=context))[1]
        assert refused[0]["reason"] == f"an event may be at most {size - 1} bytes"


def test_a_nul_character_from_any_part_of_a_request_is_refused():
    """The intake searches each message's JSON for U+0000 as it checks its size, so that normalize need
    not search the event's texts; the batch's context and the request's source are searched too."""
    nul = {**valid(1), "properties": {"category": "a\x00b"}}
    in_context = {"page": {"url": "https://shop.example/\x00"}}
    _, rejected, accepted = INTAKE.records([valid(0), nul, {**valid(2), "context": in_context}], facts())
    assert [(r["index"], r["field"]) for r in rejected] == [(1, "$"), (2, "$")]
    assert "category may not contain the NUL character" in rejected[0]["reason"]
    assert "page_url may not contain the NUL character" in rejected[1]["reason"]
    assert [e.event_id for e in accepted] == ["ok-0"]
    _, rejected, accepted = INTAKE.records([valid(0), {**valid(1), "context": {}}], facts(context=in_context))
    assert [(r["index"], r["field"]) for r in rejected] == [(0, "$")] and [e.event_id for e in accepted] == ["ok-1"]
    _, rejected, _ = INTAKE.records([valid(0)], facts(source="web\x00"))
    assert [(r["field"], r["reason"]) for r in rejected] == [
        ("$", "Value error, source may not contain the NUL character")]


def test_request_facts_are_bounded_in_every_bad_row():
    sent_at = orjson.loads(b"[" * 300 + b"]" * 300)
    records, rejected, _ = INTAKE.records([{**valid(0), "timestamp": NOW.isoformat()}, {"type": "x"}],
                                          facts(sent_at=sent_at, user_agent="A" * 100_000))
    assert [r["field"] for r in rejected] == ["sentAt", "type"]
    _, dead = split(records)
    assert all(d["request"]["sent_at"] == {"truncated": True, "json_type": "list"} for d in dead)
    assert all(len(d["request"]["user_agent"]) <= 512 for d in dead)


def test_replay_skips_summaries_and_judges_the_rest_again():
    records, _, _ = INTAKE.records([deep(40), {**valid(1), "timestamp": "2099-01-01T00:00:00Z"}], facts())
    rows = [{**dead_letter_row(f"dlq/0/{i}", value), "received_at": NOW}
            for i, (_, _, _, value) in enumerate(records)]
    new, report = replay_records(rows, INTAKE, "events", "dlq", 4)
    assert (report.skipped, report.replayed, report.invalid_again) == (1, 1, 1)
    assert report.still_invalid[0]["field"] == "timestamp"
