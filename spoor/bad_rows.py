"""Bad rows: what any stage writes to the dead-letter topic instead of dropping an event.

Versioned, self-describing, and carrying the original payload so it can be
inspected and replayed after a fix (``spoor dead-letters replay``)::

    {"schema": "spoor.bad_row/2", "processor": "collector" | "worker" | ...,
     "failure": {"type": "schema_violation" | "size_violation" | "parse_error" | "processing_error",
                 "messages": [{"field": "properties.price", "reason": "..."}]},
     "source": "web", "received_at": "...",
     "request": {"user_agent": ..., "ip": <anonymised>, "sent_at": ...},   # collector only
     "replay_of": "<dead letter id>",                                      # replays only
     "payload": <the original message>}

Version 1 records (``failure: {field, reason}``) are still read.

The rule every stage follows: a failure caused by one record is data. A step raises
``InvalidRecord`` (or anything else, in a pure step); the stage's one boundary turns it into a bad
row, counts it and goes on. ``bad_row`` itself never fails: a payload that cannot be encoded (too
deep, not JSON) is kept as a bounded summary, and every text is cut to its column's length.
"""

from datetime import datetime, timezone
from typing import Any

import orjson

from spoor.errors import SpoorError

SCHEMA = "spoor.bad_row/2"
SCHEMAS = {"spoor.bad_row/1": 1, SCHEMA: 2}

SCHEMA_VIOLATION = "schema_violation"  # the message breaks the event contract
SIZE_VIOLATION = "size_violation"      # the message is over a size limit
PARSE_ERROR = "parse_error"            # the record is not JSON
PROCESSING_ERROR = "processing_error"  # a step raised unexpectedly on this record (a bug or a limit)
FOREIGN_RECORD = "foreign_record"      # something on the dead-letter topic that is not a bad row

# dead_letters column lengths (storage/tables.py DeadLetter)
FIELD_CHARS, PROCESSOR_CHARS, SOURCE_CHARS, TYPE_CHARS, REPLAY_CHARS = 256, 64, 64, 64, 300
REASON_CHARS = 2000
MAX_PAYLOAD_BYTES = 256 * 1024  # a bigger payload is kept as a summary
MAX_PAYLOAD_DEPTH = 64  # so is a deeper one (jsonb and every reader downstream stay safe)


class InvalidRecord(SpoorError):
    """One record cannot be processed: it becomes a bad row (``field``: a dotted path, or "$")."""

    def __init__(self, field: str, reason: str, failure_type: str = SCHEMA_VIOLATION):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.failure_type = failure_type


def describe(error: BaseException) -> str:
    """The reason of a bad row made from an unexpected exception."""
    return f"{error.__class__.__name__}: {error}"[:REASON_CHARS]


def bad_row(processor: str, field: str | None, reason: str, payload, source: str | None = None,
            received_at: datetime | None = None, *, failure_type: str = SCHEMA_VIOLATION,
            request: dict | None = None, replay_of: str | None = None) -> bytes:
    if payload is None:
        payload = {"value": None}
    elif isinstance(payload, (bytes, bytearray)):
        try:
            payload = orjson.loads(payload)
        except (orjson.JSONDecodeError, RecursionError):
            payload = {"raw": bytes(payload[:MAX_PAYLOAD_BYTES]).decode("utf-8", "replace")}
            failure_type = PARSE_ERROR if failure_type == SCHEMA_VIOLATION else failure_type
    row: dict[str, Any] = {
        "schema": SCHEMA, "processor": _cut(processor, PROCESSOR_CHARS),
        "failure": {"type": failure_type, "messages": [{"field": _cut(field, FIELD_CHARS),
                                                        "reason": _cut(reason, REASON_CHARS)}]},
        "source": _cut(source, SOURCE_CHARS),
        "received_at": (received_at or datetime.now(timezone.utc)).isoformat(),
        "payload": payload,
    }
    if request:
        row["request"] = request
    if replay_of:
        row["replay_of"] = _cut(replay_of, REPLAY_CHARS)
    try:
        encoded = orjson.dumps(row)
    except (TypeError, orjson.JSONEncodeError):  # nested deeper than orjson writes, or not JSON data
        encoded = None
    if encoded is None or len(encoded) > MAX_PAYLOAD_BYTES + 16 * 1024 or deeper_than(payload, MAX_PAYLOAD_DEPTH):
        row["payload"] = payload_summary(payload)
        if encoded is None and not _encodable(row.get("request")):
            del row["request"]
        encoded = orjson.dumps(row, default=str)
    return _without_nul(encoded)


def too_deep_at(value, limit: int) -> tuple | None:
    """The path (keys and indexes) of the first list or object nested deeper than ``limit`` levels
    (``value`` itself is level 1), else None. Iterative: no input can exhaust the stack."""
    stack = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            children = item.items()
        elif isinstance(item, (list, tuple)):
            children = enumerate(item)
        else:
            continue
        if depth > limit:
            return path
        stack.extend((child, depth + 1, path + (key,)) for key, child in children
                     if isinstance(child, (dict, list, tuple)))
    return None


def deeper_than(value, limit: int) -> bool:
    """Whether JSON data nests more than ``limit`` levels."""
    return too_deep_at(value, limit) is not None


def _encodable(value) -> bool:
    try:
        orjson.dumps(value)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


def payload_summary(payload) -> dict:
    """What a bad row keeps of a payload it cannot store whole: its shape, never its depth."""
    summary: dict[str, Any] = {"truncated": True, "type": type(payload).__name__}
    if isinstance(payload, dict):
        summary["keys"] = [_cut(str(key), FIELD_CHARS) for key in list(payload)[:50]]
    elif isinstance(payload, (list, str, bytes)):
        summary["length"] = len(payload)
    return summary


def _cut(text, chars: int):
    return text[:chars] if isinstance(text, str) and len(text) > chars else text


def dead_letter_row(record_id: str, raw: bytes) -> dict:
    """The ``dead_letters`` row for one bad row read back from Kafka (tolerates foreign records)."""
    raw = raw if isinstance(raw, bytes) else b"null"  # a null record value (tombstone)
    try:
        data = orjson.loads(_without_nul(raw))
    except (orjson.JSONDecodeError, RecursionError):
        data = None
    version = SCHEMAS.get(data.get("schema")) if isinstance(data, dict) else None
    if version is None:
        return _row(record_id, processor="unknown", failure_type=FOREIGN_RECORD,
                    messages=[{"field": None, "reason": "record on the dead-letter topic is not a spoor bad row"}],
                    source=None,
                    payload={"raw": raw[:MAX_PAYLOAD_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")},
                    received_at=datetime.now(timezone.utc), request=None, replay_of=None, version=None)
    failure = data.get("failure") if isinstance(data.get("failure"), dict) else {}
    if version == 1:
        failure_type, messages = SCHEMA_VIOLATION, [{"field": failure.get("field"), "reason": failure.get("reason")}]
    else:
        failure_type, messages = str(failure.get("type")), failure.get("messages") or [{"field": None, "reason": "?"}]
    payload = data.get("payload")
    if len(raw) > MAX_PAYLOAD_BYTES + 16 * 1024 or deeper_than(payload, MAX_PAYLOAD_DEPTH):
        payload = payload_summary(payload)
    return _row(record_id, processor=str(data.get("processor")), failure_type=failure_type, messages=messages,
                source=data.get("source"), payload=payload if isinstance(payload, dict) else {"value": payload},
                received_at=_time(data.get("received_at")), request=data.get("request"),
                replay_of=data.get("replay_of"), version=version)


def _time(value) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _row(record_id, *, processor, failure_type, messages, source, payload, received_at, request, replay_of,
         version) -> dict:
    """Every text cut to its column: a hostile record on the topic must not fail the batch's write."""
    if not isinstance(messages, list) or not messages:
        messages = [{"field": None, "reason": "?"}]
    messages = [{"field": _cut(m.get("field"), FIELD_CHARS) if isinstance(m.get("field"), str) else None,
                 "reason": _cut(str(m.get("reason")), REASON_CHARS)} if isinstance(m, dict)
                else {"field": None, "reason": _cut(str(m), REASON_CHARS)} for m in messages[:20]]
    first = messages[0]
    field = first.get("field")
    return {"id": record_id, "processor": _cut(processor, PROCESSOR_CHARS),
            "field": None if field is None else _cut(str(field), FIELD_CHARS),
            "reason": _cut(str(first.get("reason")), REASON_CHARS),
            "source": _cut(source, SOURCE_CHARS) if isinstance(source, str) else None,
            "payload": payload, "received_at": received_at,
            "schema_version": version, "failure_type": _cut(failure_type, TYPE_CHARS), "messages": messages,
            "request": request if isinstance(request, dict) and not deeper_than(request, MAX_PAYLOAD_DEPTH) else None,
            "replay_of": _cut(replay_of, REPLAY_CHARS) if isinstance(replay_of, str) else None}


def _without_nul(encoded: bytes) -> bytes:
    """PostgreSQL's jsonb cannot hold U+0000; a bad row is stored with U+FFFD in its place."""
    if b"\\u0000" not in encoded:
        return encoded
    try:
        return orjson.dumps(_replace_nul(orjson.loads(encoded)))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
        return encoded.replace(b"\\u0000", b"\\ufffd")


def _replace_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    return value
