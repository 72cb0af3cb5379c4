"""Bad rows: what any stage writes to the dead-letter topic instead of dropping an event.

Versioned, self-describing, and carrying the original payload so it can be
inspected and replayed after a fix (``spoor dead-letters replay``)::

    {"schema": "spoor.bad_row/2", "processor": "collector" | "worker" | ...,
     "failure": {"type": "schema_violation" | "size_violation" | "parse_error",
                 "messages": [{"field": "properties.price", "reason": "..."}]},
     "source": "web", "received_at": "...",
     "request": {"user_agent": ..., "ip": <anonymised>, "sent_at": ...},   # collector only
     "replay_of": "<dead letter id>",                                      # replays only
     "payload": <the original message>}

Version 1 records (``failure: {field, reason}``) are still read.
"""

from datetime import datetime, timezone
from typing import Any

import orjson

SCHEMA = "spoor.bad_row/2"
SCHEMAS = {"spoor.bad_row/1": 1, SCHEMA: 2}

SCHEMA_VIOLATION = "schema_violation"  # the message breaks the event contract
SIZE_VIOLATION = "size_violation"      # the message is over a size limit
PARSE_ERROR = "parse_error"            # the record is not JSON
FOREIGN_RECORD = "foreign_record"      # something on the dead-letter topic that is not a bad row


def bad_row(processor: str, field: str | None, reason: str, payload, source: str | None = None,
            received_at: datetime | None = None, *, failure_type: str = SCHEMA_VIOLATION,
            request: dict | None = None, replay_of: str | None = None) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            payload = {"raw": payload.decode("utf-8", "replace")}
            failure_type = PARSE_ERROR
    row: dict[str, Any] = {
        "schema": SCHEMA, "processor": processor,
        "failure": {"type": failure_type, "messages": [{"field": field, "reason": reason}]},
        "source": source,
        "received_at": (received_at or datetime.now(timezone.utc)).isoformat(),
        "payload": payload,
    }
    if request:
        row["request"] = request
    if replay_of:
        row["replay_of"] = replay_of
    return _without_nul(orjson.dumps(row))


def dead_letter_row(record_id: str, raw: bytes) -> dict:
    """The ``dead_letters`` row for one bad row read back from Kafka (tolerates foreign records)."""
    try:
        data = orjson.loads(_without_nul(raw))
    except orjson.JSONDecodeError:
        data = None
    version = SCHEMAS.get(data.get("schema")) if isinstance(data, dict) else None
    if version is None:
        return _row(record_id, "unknown", FOREIGN_RECORD,
                    [{"field": None, "reason": "record on the dead-letter topic is not a spoor bad row"}],
                    None, {"raw": raw.decode("utf-8", "replace").replace("\x00", "\ufffd")},
                    datetime.now(timezone.utc), None, None, None)
    failure = data.get("failure") if isinstance(data.get("failure"), dict) else {}
    if version == 1:
        failure_type, messages = SCHEMA_VIOLATION, [{"field": failure.get("field"), "reason": failure.get("reason")}]
    else:
        failure_type, messages = str(failure.get("type")), failure.get("messages") or [{"field": None, "reason": "?"}]
    payload = data.get("payload")
    return _row(record_id, str(data.get("processor")), failure_type, messages, data.get("source"),
                payload if isinstance(payload, dict) else {"value": payload},
                _time(data.get("received_at")), data.get("request"), data.get("replay_of"), version)


def _time(value) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _row(record_id, processor, failure_type, messages, source, payload, received_at, request, replay_of,
         version) -> dict:
    first = messages[0]
    return {"id": record_id, "processor": processor, "field": first.get("field"), "reason": str(first.get("reason")),
            "source": source, "payload": payload, "received_at": received_at,
            "schema_version": version, "failure_type": failure_type, "messages": messages,
            "request": request, "replay_of": replay_of}


def _without_nul(encoded: bytes) -> bytes:
    """PostgreSQL's jsonb cannot hold U+0000; a bad row is stored with U+FFFD in its place."""
    if b"\\u0000" not in encoded:
        return encoded
    try:
        return orjson.dumps(_replace_nul(orjson.loads(encoded)))
    except orjson.JSONDecodeError:
        return encoded


def _replace_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    return value
