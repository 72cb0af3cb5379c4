"""Replaying dead letters after a fix: each original payload goes through the collector's intake again.

- Collector dead letters (Segment messages) are normalised and enriched as on first receipt, with the
  request facts the bad row kept (endpoint, sentAt, user agent, anonymised IP) and the original
  ``received_at``. A payload without a ``messageId`` gets one derived from the dead letter's id, so a
  replay that is repeated produces the same event (deduplicated downstream).
- Worker dead letters (canonical events) are validated as canonical events again.
- Whatever is still invalid becomes a new dead letter (``replay_of`` = the old id); the old one is
  marked ``replayed_at`` once Kafka acknowledged everything. Foreign records are skipped, and so are
  dead letters that kept only a summary of their message (too deep or too big to keep whole:
  ``ingest.intake.is_summary``), which no fix can bring back.
"""

import asyncio
import hashlib
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from spoor.bad_rows import FOREIGN_RECORD, bad_row
from spoor.consent import category_index
from spoor.events import Event
from spoor.ingest.intake import Intake, Record, RequestFacts, is_summary
from spoor.ingest.producer import EventProducer
from spoor.settings import Settings
from spoor.topics import partition_for


@dataclass
class ReplayReport:
    replayed: int = 0        # dead letters re-submitted
    accepted: int = 0        # events that are valid now
    invalid_again: int = 0   # written as new dead letters
    skipped: int = 0         # not replayable (foreign records)
    still_invalid: list[dict] = field(default_factory=list)  # {"id", "field", "reason"}
    replayed_ids: list[str] = field(default_factory=list)


def replay_records(rows: list[dict], intake: Intake, events_topic: str, dead_letter_topic: str,
                   partitions: int) -> tuple[list[Record], ReplayReport]:
    """Kafka records for dead letters, and what they amount to. Pure."""
    records: list[Record] = []
    report = ReplayReport()
    for row in rows:
        if row["failure_type"] == FOREIGN_RECORD or row["processor"] == "unknown" or is_summary(row["payload"]):
            report.skipped += 1
            continue
        if row["processor"] == "worker":
            new, rejected = _canonical(row, events_topic, dead_letter_topic, partitions)
        else:
            new, rejected, _ = intake.records([_with_message_id(row)], _facts(row), replay_of=row["id"])
        records.extend(new)
        report.replayed_ids.append(row["id"])
        report.replayed += 1
        if rejected:
            report.invalid_again += 1
            report.still_invalid.append({"id": row["id"], "field": rejected[0]["field"],
                                         "reason": rejected[0]["reason"]})
        else:
            report.accepted += 1
    return records, report


def replay(settings: Settings, rows: list[dict], *, dry_run: bool = False) -> ReplayReport:
    """Re-submit dead letters to Kafka; returns once every record is acknowledged."""
    producer = EventProducer(settings)
    try:
        partitions = producer.partitions(settings.events_topic)
        intake = Intake(settings.events_topic, settings.dead_letter_topic, partitions, settings.max_event_bytes,
                        max_future_event_s=settings.max_future_event_s, max_nesting_depth=settings.max_nesting_depth,
                        consent_index=category_index(settings.consent_categories))
        records, report = replay_records(rows, intake, settings.events_topic,
                                                       settings.dead_letter_topic, partitions)
        if not dry_run:
            asyncio.run(producer.send_all(records))
    finally:
        producer.close()
    return report


def _facts(row: dict) -> RequestFacts:
    request = row.get("request") or {}
    return RequestFacts(received_at=row["received_at"], source=row["source"] or "unknown",
                        endpoint=request.get("endpoint", "batch"), sent_at=request.get("sent_at"),
                        user_agent=request.get("user_agent"), peer_ip=request.get("ip"))


def _with_message_id(row: dict):
    payload = row["payload"]
    if isinstance(payload, dict) and payload.get("messageId") in (None, ""):
        payload = {**payload, "messageId": "replay-" + hashlib.sha256(row["id"].encode()).hexdigest()[:32]}
    return payload


def _canonical(row: dict, events_topic: str, dead_letter_topic: str, partitions: int):
    try:
        event = Event.model_validate(row["payload"])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "$"
        record = bad_row("worker", where, first["msg"], orjson.dumps(row["payload"]), row["source"],
                         row["received_at"], replay_of=row["id"])
        return [(dead_letter_topic, None, None, record)], [{"field": where, "reason": first["msg"]}]
    partition = partition_for(event.user_key, partitions)
    return [(events_topic, partition, None, event.to_json())], []

