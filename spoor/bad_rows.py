"""Bad rows: what any stage writes to the dead-letter topic instead of dropping an event.

Versioned, self-describing, and carrying the original payload so it can be
inspected and replayed after a fix.
"""

from datetime import datetime, timezone

import orjson

SCHEMA = "spoor.bad_row/1"


def bad_row(processor: str, field: str | None, reason: str, payload, source: str | None = None,
            received_at: datetime | None = None) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            payload = {"raw": payload.decode("utf-8", "replace")}
    return orjson.dumps({
        "schema": SCHEMA, "processor": processor,
        "failure": {"field": field, "reason": reason},
        "source": source,
        "received_at": (received_at or datetime.now(timezone.utc)).isoformat(),
        "payload": payload,
    })


def dead_letter_row(record_id: str, raw: bytes) -> dict:
    """The ``dead_letters`` row for one bad row read back from Kafka (tolerates foreign records)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return {"id": record_id, "processor": "unknown", "field": None,
                "reason": "record on the dead-letter topic is not a spoor bad row",
                "source": None, "payload": {"raw": raw.decode("utf-8", "replace")},
                "received_at": datetime.now(timezone.utc)}
    failure = data.get("failure") or {}
    payload = data.get("payload")
    return {"id": record_id, "processor": str(data.get("processor")), "field": failure.get("field"),
            "reason": str(failure.get("reason")), "source": data.get("source"),
            "payload": payload if isinstance(payload, dict) else {"value": payload},
            "received_at": datetime.fromisoformat(data["received_at"])}
