"""The collector's intake on arbitrary messages: only typed rejections, and every record it makes is readable."""

from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.intake import Intake, RequestFacts
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
    events = [e for topic, _, _, value in records if topic == "events" for e in decode_record(value)]
    assert events == accepted
    dead = [dead_letter_row("x", value) for topic, _, _, value in records if topic == "dlq"]
    assert [(d["field"], d["reason"]) for d in dead] == [(r["field"], r["reason"]) for r in rejected]
    assert all(e.anonymized_ip == "192.0.2.0" or e.anonymized_ip.endswith((".0", "::")) for e in accepted)
