"""The collector's intake on arbitrary messages: only typed rejections, and every record it makes is readable."""

from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.intake import Intake, RequestFacts
from ingest.producer import partition_for
from spoor.bad_rows import dead_letter_row
from spoor.events import decode_record
from tests.strategies import context, some_messages, times

INTAKE = Intake("events", "dlq", 4, 32 * 1024)


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
