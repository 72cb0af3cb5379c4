"""Behaviour triggers from Kafka (settings.triggers_topic) into ``behaviour_triggers``.

The stream analytics may write the table directly too; both paths are idempotent on ``trigger_id``.
Offsets are committed only after the rows are in PostgreSQL. A message that is not a valid trigger
goes to the campaigns dead-letter topic with the reason (never dropped silently).
"""

from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert

from spoor.bad_rows import InvalidRecord, bad_row, deeper_than, describe
from spoor.campaigns import campaign_metrics
from spoor.campaigns.campaign_spec import TRIGGER_KINDS
from spoor.storage.tables import BehaviourTrigger


class TriggerMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    trigger_id: str = Field(min_length=1, max_length=400)
    kind: Literal[TRIGGER_KINDS]
    user_key: str = Field(min_length=1, max_length=256)
    episode: str = Field(min_length=1, max_length=256)
    fired_at: datetime
    details: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _id_matches(self):
        if self.trigger_id != f"{self.kind}:{self.user_key}:{self.episode}":
            raise ValueError("trigger_id must be '<kind>:<user_key>:<episode>'")
        if self.fired_at.tzinfo is None:
            raise ValueError("fired_at needs a time zone")
        return self


MAX_DETAILS_DEPTH = 16


def parse_triggers(values: list[bytes | None]) -> tuple[list[dict], list[tuple[bytes | None, str, str]]]:
    """(rows, rejects) where a reject is (raw value, field, reason). Anything one message holds that
    PostgreSQL would refuse (U+0000, nesting past MAX_DETAILS_DEPTH) is a reject, so that one message
    can never fail the batch's insert, which would be retried for ever."""
    rows, rejects = [], []
    for raw in values:
        try:
            if not isinstance(raw, (bytes, bytearray)):
                raise InvalidRecord("$", "the record has no value (null)")
            if b"\\u0000" in raw:
                raise InvalidRecord("$", "PostgreSQL text cannot hold the NUL character (\\u0000)")
            row = TriggerMessage.model_validate_json(raw).model_dump()
            if deeper_than(row["details"], MAX_DETAILS_DEPTH):
                raise InvalidRecord("details", f"nested deeper than {MAX_DETAILS_DEPTH} levels")
            rows.append(row)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            rejects.append((raw, ".".join(map(str, first["loc"])) or None, first["msg"]))
        except InvalidRecord as err:
            rejects.append((raw, err.field, err.reason))
        except Exception as err:  # noqa: BLE001 - one message's failure is data
            rejects.append((raw, "$", describe(err)))
    return rows, rejects


def store_triggers(engine: Engine, rows: list[dict]) -> int:
    """Insert in trigger_id order, the worker's order for the same rows: one lock order, no deadlock."""
    if not rows:
        return 0
    rows = sorted(rows, key=lambda row: row["trigger_id"])
    with engine.begin() as conn:
        return len(conn.execute(insert(BehaviourTrigger.__table__).values(rows)
                                .on_conflict_do_nothing().returning(BehaviourTrigger.trigger_id)).all())


class TriggerIngest:
    """Polls the triggers topic: parse, store, dead-letter rejects, then commit."""

    def __init__(self, engine: Engine, consumer, producer, dead_letter_topic: str):
        self.engine, self.consumer, self.producer, self.dead_letter_topic = engine, consumer, producer, dead_letter_topic

    def poll_once(self, timeout_ms: int) -> int:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        values = [record.value for records in batches.values() for record in records]
        if not values:
            return 0
        rows, rejects = parse_triggers(values)
        try:
            stored = store_triggers(self.engine, rows)
            sent = [self.producer.send(self.dead_letter_topic, value=bad_row("campaign-triggers", field, reason, raw))
                    for raw, field, reason in rejects]
            for future in sent:
                future.get(timeout=30)  # a reject is acknowledged by Kafka before its offset is committed
            self.consumer.commit()
        except Exception:
            # Read these records again next time: the consumer's position already moved past them.
            for tp, records in batches.items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
            raise
        campaign_metrics.TRIGGERS.labels("stored").inc(stored)
        campaign_metrics.TRIGGERS.labels("duplicate").inc(len(rows) - stored)
        campaign_metrics.TRIGGERS.labels("rejected").inc(len(rejects))
        return stored


def trigger_message(kind: str, user_key: str, episode: str, fired_at: datetime, details: dict | None = None) -> bytes:
    """What a producer of triggers sends (used by tests and tools)."""
    return orjson.dumps({"trigger_id": f"{kind}:{user_key}:{episode}", "kind": kind, "user_key": user_key,
                         "episode": episode, "fired_at": fired_at.isoformat(), "details": details or {}})
