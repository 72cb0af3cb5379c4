"""Segment messages -> Kafka records: size check, normalisation, edge enrichment, routing.

Shared by the collector (one HTTP request) and ``spoor dead-letters replay`` (one
stored bad row), so a replayed payload is judged exactly like a fresh one. No I/O.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ingest.enrich import anonymize_ip, anonymize_payload_ip, enrichment
from ingest.normalize import InvalidEvent, normalize
from ingest.producer import partition_for
from spoor.bad_rows import SCHEMA_VIOLATION, SIZE_VIOLATION, bad_row
from spoor.events import Event, encode_events

# Events per Kafka record: keeps a record of a maximal request (2500 small events, all of one
# user, each grown by enrichment) well under the broker's 1 MB message limit.
EVENTS_PER_RECORD = 500

Record = tuple[str, int | None, bytes | None, bytes]  # topic, partition, key, value


@dataclass(frozen=True)
class RequestFacts:
    """What the collector knows about the request a message came in. ``peer_ip`` is raw: never store it."""

    received_at: datetime
    source: str
    endpoint: str = "batch"          # batch, track, page, ... (a single-message endpoint implies the type)
    sent_at: Any = None               # the batch's sentAt
    context: dict | None = None       # the batch's context, for messages without their own
    user_agent: str | None = None     # User-Agent header
    peer_ip: str | None = None

    def stored(self) -> dict:
        """The facts a bad row keeps for its replay: the IP anonymised, like everywhere else."""
        facts = {"endpoint": self.endpoint, "sent_at": self.sent_at, "user_agent": self.user_agent,
                 "ip": anonymize_ip(self.peer_ip)}
        return {name: value for name, value in facts.items() if value is not None}


class Intake:
    def __init__(self, events_topic: str, dead_letter_topic: str, partitions: int, max_event_bytes: int,
                 processor: str = "collector"):
        self.events_topic = events_topic
        self.dead_letter_topic = dead_letter_topic
        self.partitions = partitions
        self.max_event_bytes = max_event_bytes
        self.processor = processor

    def records(self, messages: list, facts: RequestFacts,
                replay_of: str | None = None) -> tuple[list[Record], list[dict], list[Event]]:
        """Kafka records for messages (valid events by partition, one bad row per invalid message),
        the rejections as ``{index, field, reason}``, and the accepted events."""
        default_type = None if facts.endpoint == "batch" else facts.endpoint
        by_partition: dict[int, list[Event]] = {}
        records: list[Record] = []
        rejected: list[dict] = []
        accepted: list[Event] = []
        for index, message in enumerate(messages):
            if isinstance(message, dict) and facts.context and "context" not in message:
                message = {**message, "context": facts.context}
            failure_type = SCHEMA_VIOLATION
            try:
                if len(orjson.dumps(message)) > self.max_event_bytes:
                    failure_type = SIZE_VIOLATION
                    raise InvalidEvent("$", f"an event may be at most {self.max_event_bytes} bytes")
                context = message.get("context") if isinstance(message, dict) else None
                event = normalize(message, received_at=facts.received_at, source=facts.source,
                                  batch_sent_at=facts.sent_at, default_type=default_type,
                                  enrichment=enrichment(context, facts.user_agent, facts.peer_ip))
            except InvalidEvent as err:
                rejected.append({"index": index, "field": err.field, "reason": err.reason})
                records.append((self.dead_letter_topic, None, None, bad_row(
                    self.processor, err.field, err.reason, anonymize_payload_ip(message), facts.source,
                    facts.received_at, failure_type=failure_type, request=facts.stored(), replay_of=replay_of)))
                continue
            accepted.append(event)
            by_partition.setdefault(partition_for(event.user_key, self.partitions), []).append(event)
        for partition, events in by_partition.items():
            for start in range(0, len(events), EVENTS_PER_RECORD):
                records.append((self.events_topic, partition, None,
                                encode_events(events[start:start + EVENTS_PER_RECORD])))
        return records, rejected, accepted
