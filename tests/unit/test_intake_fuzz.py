"""The collector's intake on arbitrary messages: only typed rejections, and every record it makes is readable."""

import json
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoor.bad_rows import dead_letter_row
from spoor.events import decode_record
from spoor.ingest.intake import Intake, RequestFacts
from spoor.ingest.normalize import InvalidEvent, normalize
from spoor.topics import partition_for
from tests.support.strategies import context, messages, python_values, some_messages, times, with_oddities

INTAKE = Intake("events", "dlq", 4, 32 * 1024)
KAFKA_RECORD_LIMIT = 1_000_000


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(some_messages, max_size=5), times, context, st.sampled_from(["batch", "track", "page"]))
def test_any_message_is_accepted_or_dead_lettered(messages, sent_at, batch_context, endpoint):
    facts = RequestFacts(received_at=datetime.now(timezone.utc), source="web", endpoint=endpoint, sent_at=sent_at,
                         context=batch_context if isinstance(batch_context, dict) else None,
                         user_agent="Mozilla/5.0", peer_ip="192.0.2.1")
    records, rejected, accepted = INTAKE.records(messages, facts)
    assert len(rejected) + len(accepted) == len(messages)
    events = [(partition, e) for topic, partition, _, value in records if topic == "events"
              for e in decode_record(value)]
    assert all(partition == partition_for(e.user_key, INTAKE.partitions) for partition, e in events)
    # Records are grouped by partition, so only each user's own order is kept (all Kafka promises anyway).
    assert by_user([e for _, e in events]) == by_user(accepted)
    dead = [dead_letter_row("x", value) for topic, _, _, value in records if topic == "dlq"]
    assert [(d["field"], d["reason"]) for d in dead] == [(r["field"], r["reason"]) for r in rejected]
    assert all(e.anonymized_ip == "192.0.2.0" or e.anonymized_ip.endswith((".0", "::")) for e in accepted)


def by_user(events: list) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for event in events:
        grouped.setdefault(event.user_key, []).append(event)
    return grouped


def test_users_on_different_partitions_keep_their_own_order():
    users = ["u0", "u1", "u0", "u5", "u1", "u0"]  # partitions 2, 0, 2, 3, 0, 2 of 4
    messages = [{"type": "track", "event": "Product Viewed", "userId": user, "messageId": f"m{index}"}
                for index, user in enumerate(users)]
    facts = RequestFacts(received_at=datetime.now(timezone.utc), source="web")
    records, rejected, accepted = INTAKE.records(messages, facts)
    assert rejected == [] and len({partition for _, partition, _, _ in records}) == 3
    events = [e for _, _, _, value in records for e in decode_record(value)]
    assert {user: [e.event_id for e in group] for user, group in by_user(events).items()} == {
        "u0": ["m0", "m2", "m5"], "u1": ["m1", "m4"], "u5": ["m3"]}


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, times, st.sampled_from([None, "track", "page"]))
def test_normalize_raises_only_invalid_event_on_json_messages(message, sent_at, default_type):
    received = datetime.now(timezone.utc)
    message = orjson.loads(orjson.dumps(message))  # what the collector reads from a body
    try:
        event = normalize(message, received_at=received, source="web", batch_sent_at=sent_at,
                          default_type=default_type)
    except InvalidEvent:
        return
    assert event.event_time <= received + timedelta(seconds=300)
    decode_record(event.to_json())


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(with_oddities(), some_messages, python_values), min_size=1, max_size=6),
       st.one_of(times, python_values), st.one_of(context, python_values), st.sampled_from(["batch", "track"]))
def test_hostile_python_values_are_bad_rows_never_exceptions(messages, sent_at, batch_context, endpoint):
    """NaN/Infinity, integers past 64 bits, lone surrogates, bytes, tuples, nesting past orjson's 254
    levels, anywhere in a message, the batch's sentAt or its context: each message is an event or a
    bad row, every bad row decodes and fits a Kafka record, and the 400 answer can be rendered."""
    received = datetime.now(timezone.utc)
    facts = RequestFacts(received_at=received, source="web", endpoint=endpoint, sent_at=sent_at,
                         context=batch_context if isinstance(batch_context, dict) else None,
                         user_agent="Mozilla/5.0", peer_ip="192.0.2.1")
    records, rejected, accepted = INTAKE.records(messages, facts)
    assert len(rejected) + len(accepted) == len(messages)
    assert [r["index"] for r in rejected] == sorted({r["index"] for r in rejected})
    # What Starlette's JSONResponse does with the answer: no NaN, no lone surrogate.
    json.dumps(rejected, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert all(len(r["field"]) <= 256 for r in rejected)
    events = [e for topic, _, _, value in records if topic == "events" for e in decode_record(value)]
    assert sorted(e.event_id for e in events) == sorted(e.event_id for e in accepted)
    assert all(e.event_time <= received + timedelta(seconds=300) for e in events)
    dead = []
    for topic, _, _, value in records:
        if topic == "dlq":
            assert len(value) < KAFKA_RECORD_LIMIT and b"fuzz-secret-key" not in value
            dead.append(dead_letter_row("x", value))
    assert [(d["field"], d["reason"]) for d in dead] == [(r["field"], r["reason"]) for r in rejected]
