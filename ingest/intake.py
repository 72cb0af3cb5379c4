"""Segment messages -> Kafka records: size and nesting checks, normalisation, edge enrichment, routing.

Shared by the collector (one HTTP request) and ``spoor dead-letters replay`` (one
stored bad row), so a replayed payload is judged exactly like a fresh one. No I/O.

One message is one unit of failure: whatever goes wrong while turning a message into an event
(a broken contract, a limit, or an unexpected exception: ``processing_error``) becomes that
message's bad row, and the other messages of the request go on. Every bad row can be encoded and
is bounded in size: its payload is the message without credentials and with the IP anonymised,
or, for a message too deep, too big or past the request's dead-letter budget, a summary
(``{"truncated": true, "reason": ..., "keys": [...]}``) that replay skips.
"""

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from spoor.bad_rows import PROCESSING_ERROR, SCHEMA_VIOLATION, SIZE_VIOLATION, bad_row, describe, too_deep_at
from spoor.consent import DEFAULT_INDEX
from spoor.events import Event, encode_events
from spoor.ingest.enrich import MAX_USER_AGENT_CHARS, anonymize_ip, anonymize_payload_ip, enrichment
from spoor.ingest.normalize import CREDENTIAL_FIELDS, DEFAULT_MAX_FUTURE_S, InvalidEvent, normalize, repeated_id
from spoor.settings import Settings
from spoor.topics import partition_for

log = logging.getLogger(__name__)

# Events per Kafka record: keeps a record of a maximal request (2500 small events, all of one
# user, each grown by enrichment) well under the broker's 1 MB message limit.
EVENTS_PER_RECORD = 500
DEFAULT_MAX_NESTING_DEPTH: int = Settings.model_fields["max_nesting_depth"].default
# Bad rows: a field path fits dead_letters.field (VARCHAR(256)); reasons stay readable in a 400.
MAX_FIELD_CHARS = 200
MAX_REASON_CHARS = 300
# A dead letter keeps the whole message up to max(4 x max_event_bytes, 64 KiB), never more than
# fits a Kafka record (the broker's default limit is 1 MB); one request's dead letters keep whole
# messages up to DEAD_LETTER_BUDGET_BYTES in all, summaries after that (a batch context merged into
# 2,500 messages must not turn one 512 KB request into a gigabyte of dead letters).
MIN_DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
MAX_DEAD_LETTER_PAYLOAD_BYTES = 900 * 1024
DEAD_LETTER_BUDGET_BYTES = 4 * 1024 * 1024
SUMMARY_KEYS = 50         # top-level keys a summary lists
SUMMARY_KEY_CHARS = 64
# JSON integers orjson reads as integers; a Python caller (replay of a PostgreSQL row) may pass others.
INT_RANGE = (-2 ** 63, 2 ** 64 - 1)
SURROGATES = re.compile("[\ud800-\udfff]")
NUL_ESCAPE = b"\\u0000"  # how JSON (orjson) writes U+0000

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
        """The facts a bad row keeps for its replay: the IP anonymised, like everywhere else; bounded."""
        facts = {"endpoint": _bounded_text(self.endpoint, 64), "sent_at": _stored_sent_at(self.sent_at),
                 "user_agent": _bounded_text(self.user_agent, MAX_USER_AGENT_CHARS), "ip": anonymize_ip(self.peer_ip)}
        return {name: value for name, value in facts.items() if value is not None}


class Intake:
    def __init__(self, events_topic: str, dead_letter_topic: str, partitions: int, max_event_bytes: int,
                 processor: str = "collector", *, max_future_event_s: float = DEFAULT_MAX_FUTURE_S,
                 max_nesting_depth: int = DEFAULT_MAX_NESTING_DEPTH, consent_index: dict[str, str] = DEFAULT_INDEX):
        self.events_topic = events_topic
        self.dead_letter_topic = dead_letter_topic
        self.partitions = partitions
        self.max_event_bytes = max_event_bytes
        self.processor = processor
        self.max_future_event_s = max_future_event_s
        self.max_nesting_depth = max_nesting_depth
        self.consent_index = consent_index
        self.max_dead_letter_payload_bytes = min(MAX_DEAD_LETTER_PAYLOAD_BYTES,
                                                 max(4 * max_event_bytes, MIN_DEAD_LETTER_PAYLOAD_BYTES))

    def records(self, messages: list, facts: RequestFacts,
                replay_of: str | None = None) -> tuple[list[Record], list[dict], list[Event]]:
        """Kafka records for messages (valid events by partition, one bad row per invalid message),
        the rejections as ``{index, field, reason}``, and the accepted events. Raises nothing for a message."""
        default_type = None if facts.endpoint == "batch" else facts.endpoint
        batch = _Batch(facts, facts.stored(), replay_of, DEAD_LETTER_BUDGET_BYTES)
        entries: list[tuple[int, Any, Event]] = []
        by_partition: dict[int, list[tuple[int, Any, Event]]] = {}
        derived: dict[str, int] = {}  # content-derived ids seen in this request, and how often
        context_bytes, context_too_deep, context_nul = self._batch_context(facts.context)
        # Whether U+0000 (which PostgreSQL cannot store) may be in what the request adds to its events;
        # a message's own JSON is searched for its escape as it is size-checked (``nul_free``).
        request_nul = "\x00" in facts.source or "\x00" in (facts.user_agent or "")
        for index, message in enumerate(messages):
            own = message
            merged = isinstance(message, dict) and facts.context and "context" not in message
            if merged:
                message = {**message, "context": facts.context}
            try:
                if merged and context_bytes is not None:
                    # The batch's context is encoded once per request, not once per message.
                    checked, nul_free = self._checked(own, context_bytes + (11 if own else 10))
                    nul_free = nul_free and not context_nul
                    if context_too_deep is not None:
                        raise _Unstorable(_bounded_text("context." + context_too_deep, MAX_FIELD_CHARS),
                                          self._depth_reason())
                    if checked is not own:
                        message = {**checked, "context": facts.context}
                else:
                    message, nul_free = self._checked(message)
                context = message.get("context") if isinstance(message, dict) else None
                event = normalize(message, received_at=facts.received_at, source=facts.source,
                                  batch_sent_at=facts.sent_at, default_type=default_type,
                                  enrichment=enrichment(context, facts.user_agent, facts.peer_ip),
                                  max_future_s=self.max_future_event_s, consent_index=self.consent_index,
                                  nul_free=nul_free and not request_nul)
                if message.get("messageId") in (None, ""):
                    seen = derived.get(event.event_id, 0)
                    derived[event.event_id] = seen + 1
                    if seen:
                        event = event.model_copy(update={"event_id": repeated_id(event.event_id, seen)})
                partition = partition_for(event.user_key, self.partitions)
            except _Unstorable as err:
                self._reject(batch, index, message, err.field, err.reason, SIZE_VIOLATION, summarise=True)
            except _OverLimit as err:
                self._reject(batch, index, message, err.field, err.reason, SIZE_VIOLATION, size=err.size)
            except InvalidEvent as err:
                self._reject(batch, index, message, err.field, err.reason, SCHEMA_VIOLATION)
            except Exception as err:  # noqa: BLE001 - one message's failure is that message's bad row
                reason = _exception_reason(err)
                log.warning("message %d of a request from %s raised while normalising: %s", index, facts.source,
                            reason)
                self._reject(batch, index, message, "$", reason, PROCESSING_ERROR)
            else:
                entries.append((index, message, event))
                by_partition.setdefault(partition, []).append((index, message, event))
        events_records: list[Record] = []
        for partition, group in by_partition.items():
            for start in range(0, len(group), EVENTS_PER_RECORD):
                value = self._encoded(batch, group[start:start + EVENTS_PER_RECORD])
                if value is not None:
                    events_records.append((self.events_topic, partition, None, value))
        # The answer and the dead letters list messages in request order (an event that could not be
        # encoded is rejected after the others).
        batch.rejected.sort(key=lambda r: r["index"])
        batch.dead_letters.sort(key=lambda pair: pair[0])
        failed = {r["index"] for r in batch.rejected}
        accepted = [event for index, _, event in entries if index not in failed]
        records = [(self.dead_letter_topic, None, None, value) for _, value in batch.dead_letters] + events_records
        return records, batch.rejected, accepted

    # -- one message --------------------------------------------------------------------------

    def _batch_context(self, context: dict | None) -> tuple[int | None, str | None, bool]:
        """The encoded size of a batch's context (None: encode it with each message, as it cannot be
        encoded alone), the path in it that nests too deep once it is a message's context, and whether
        its JSON holds an escaped U+0000."""
        if not context:
            return None, None, False
        try:
            encoded = orjson.dumps(context)
        except TypeError:
            return None, None, False
        too_deep = None
        if encoded.count(b"{") + encoded.count(b"[") > self.max_nesting_depth - 1:
            too_deep = _too_deep(context, self.max_nesting_depth - 1)
        return len(encoded), too_deep, NUL_ESCAPE in encoded

    def _checked(self, message: Any, extra_bytes: int = 0) -> tuple[Any, bool]:
        """The message as it is normalised, and whether its JSON is free of U+0000 (escaped: orjson
        writes it ``\\u0000``); raises InvalidEvent over a limit. ``extra_bytes``: what the batch's
        context adds to the message's size.

        orjson refuses to encode what it cannot represent (nesting past 255, lone surrogates,
        integers past 64 bits); only then, or when the message has more containers than the
        nesting limit, is the message walked."""
        try:
            encoded = orjson.dumps(message)
        except TypeError:
            message = _repaired(message, self.max_nesting_depth)
            encoded = orjson.dumps(message)
        else:
            if encoded.count(b"{") + encoded.count(b"[") > self.max_nesting_depth:
                too_deep = _too_deep(message, self.max_nesting_depth)
                if too_deep is not None:
                    raise _Unstorable(too_deep, self._depth_reason())
        if len(encoded) + extra_bytes > self.max_event_bytes:
            raise _OverLimit("$", f"an event may be at most {self.max_event_bytes} bytes", len(encoded) + extra_bytes)
        return message, NUL_ESCAPE not in encoded

    def _depth_reason(self) -> str:
        return f"JSON nested deeper than {self.max_nesting_depth} levels (max_nesting_depth)"

    def _reject(self, batch: "_Batch", index: int, message: Any, field: str, reason: str, failure_type: str, *,
                summarise: bool = False, size: int | None = None) -> None:
        field, reason = _bounded_text(field, MAX_FIELD_CHARS) or "$", _bounded_text(reason, MAX_REASON_CHARS) or "?"
        batch.rejected.append({"index": index, "field": field, "reason": reason})
        try:
            payload = self._dead_letter_payload(batch, message, reason if summarise else None, size)
            value = bad_row(self.processor, field, reason, payload, batch.facts.source, batch.facts.received_at,
                            failure_type=failure_type, request=batch.stored_facts, replay_of=batch.replay_of)
        except Exception as err:  # noqa: BLE001 - a bad row is always written, if only as a summary
            summary = {"truncated": True, "type": type(message).__name__,
                       "reason": f"not encodable: {_exception_reason(err)}"}
            value = bad_row(self.processor, field, reason, summary, batch.facts.source, batch.facts.received_at,
                            failure_type=failure_type, request=batch.stored_facts, replay_of=batch.replay_of)
        batch.dead_letters.append((index, value))

    def _dead_letter_payload(self, batch: "_Batch", message: Any, summary_reason: str | None,
                             size: int | None) -> Any:
        """What a dead letter keeps of a message: no credentials, the IP anonymised, bounded."""
        if summary_reason is not None:
            return _summary(message, summary_reason)
        payload = anonymize_payload_ip(_without_credentials(message))
        if size is None:
            try:
                size = len(orjson.dumps(payload))
            except TypeError:
                payload = _repaired(payload, self.max_nesting_depth, strict=False)
                try:
                    size = len(orjson.dumps(payload))
                except TypeError as err:
                    return _summary(message, f"not encodable: {err}")
        if size > self.max_dead_letter_payload_bytes:
            return _summary(message, f"{size} bytes, more than a dead letter keeps "
                                     f"({self.max_dead_letter_payload_bytes})", size)
        if size > batch.budget:
            return _summary(message, "the request's dead letters are over their budget "
                                     f"({DEAD_LETTER_BUDGET_BYTES} bytes)", size)
        batch.budget -= size
        return payload

    def _encoded(self, batch: "_Batch", chunk: list[tuple[int, Any, Event]]) -> bytes | None:
        """One events record; an event that cannot be encoded (none should) becomes a bad row instead."""
        try:
            return encode_events([event for _, _, event in chunk])
        except Exception:  # noqa: BLE001 - find the event(s) at fault
            pass
        values = []
        for index, message, event in chunk:
            try:
                values.append(encode_events([event])[1:-1])
            except Exception as err:  # noqa: BLE001
                reason = _exception_reason(err)
                log.warning("message %d of a request from %s: its event cannot be encoded: %s", index,
                            batch.facts.source, reason)
                self._reject(batch, index, message, "$", reason, PROCESSING_ERROR)
        return b"[" + b",".join(values) + b"]" if values else None


class _Batch:
    """Per-request state of Intake.records."""

    def __init__(self, facts: RequestFacts, stored_facts: dict, replay_of: str | None, budget: int):
        self.facts = facts
        self.stored_facts = stored_facts
        self.replay_of = replay_of
        self.budget = budget
        self.rejected: list[dict] = []
        self.dead_letters: list[tuple[int, bytes]] = []


class _OverLimit(InvalidEvent):
    """A message over the size limit: a size violation, kept whole (up to the dead-letter bounds)."""

    def __init__(self, field: str, reason: str, size: int):
        super().__init__(field, reason, SIZE_VIOLATION)
        self.size = size


class _Unstorable(InvalidEvent):
    """A message over the nesting limit: a size violation whose dead letter keeps only a summary."""

    def __init__(self, field: str, reason: str):
        super().__init__(field, reason, SIZE_VIOLATION)


def _too_deep(value: Any, limit: int) -> str | None:
    """The field path of the first container nested deeper than ``limit``, else None."""
    path = too_deep_at(value, limit)
    return None if path is None else _path(path)


def _repaired(value: Any, limit: int, strict: bool = True) -> Any:
    """A copy of a message orjson could not encode, made encodable: lone UTF-16 surrogates become U+FFFD
    (as a browser's UTF-8 encoder does). Raises InvalidEvent for nesting past ``limit`` (``_Unstorable``),
    integers past 64 bits and values that are not JSON; with ``strict=False`` (a dead letter's payload)
    those become text instead. Iterative, like ``_too_deep``."""
    root: list = [None]
    stack: list[tuple[Any, Any, Any, int, tuple]] = [(value, root, 0, 1, ())]
    while stack:
        node, parent, slot, depth, path = stack.pop()
        if isinstance(node, (dict, list, tuple)) and depth > limit:
            if strict:
                raise _Unstorable(_path(path), f"JSON nested deeper than {limit} levels (max_nesting_depth)")
            parent[slot] = {"truncated": True, "reason": f"nested deeper than {limit} levels"}
        elif isinstance(node, dict):
            copy: dict = {}
            parent[slot] = copy
            for key, child in node.items():
                key = _repaired_key(key, path, strict)
                copy[key] = None
                stack.append((child, copy, key, depth + 1, path + (key,)))
        elif isinstance(node, (list, tuple)):
            items: list = [None] * len(node)
            parent[slot] = items
            stack.extend((child, items, i, depth + 1, path + (i,)) for i, child in enumerate(node))
        else:
            parent[slot] = _repaired_scalar(node, path, strict)
    return root[0]


def _repaired_key(key: Any, path: tuple, strict: bool) -> str:
    if isinstance(key, str):
        return SURROGATES.sub("\ufffd", key)
    if strict:
        raise InvalidEvent(_path(path), f"an object key must be a string, got {type(key).__name__}")
    return _bounded_text(repr(key), SUMMARY_KEY_CHARS)


def _repaired_scalar(value: Any, path: tuple, strict: bool) -> Any:
    if isinstance(value, str):
        return SURROGATES.sub("\ufffd", value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if INT_RANGE[0] <= value <= INT_RANGE[1]:
            return value
        if strict:
            raise InvalidEvent(_path(path), "an integer must fit in 64 bits")
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) or strict else None
    if strict:
        raise InvalidEvent(_path(path), f"not a JSON value: {type(value).__name__}")
    return _bounded_text(repr(value), SUMMARY_KEY_CHARS)


def _path(path: tuple) -> str:
    """A dotted field path like InvalidEvent's, each part and the whole bounded."""
    if not path:
        return "$"
    parts = [p if isinstance(p, int) else _bounded_text(str(p), SUMMARY_KEY_CHARS) or '""' for p in path]
    return _bounded_text(".".join(str(p) for p in parts), MAX_FIELD_CHARS)


def _summary(message: Any, reason: str, size: int | None = None) -> dict:
    """What a dead letter keeps of a message it cannot keep whole (the shape of spoor.bad_rows' summaries,
    with the reason and the message's id). Replay skips it (``is_summary``)."""
    summary: dict[str, Any] = {"truncated": True, "type": type(message).__name__,
                               "reason": _bounded_text(reason, MAX_REASON_CHARS)}
    if size is not None:
        summary["bytes"] = size
    if isinstance(message, dict):
        keys = [k for k in message if k not in CREDENTIAL_FIELDS]
        summary["keys"] = [_bounded_text(k if isinstance(k, str) else repr(k), SUMMARY_KEY_CHARS)
                           for k in keys[:SUMMARY_KEYS]]
        message_id = message.get("messageId")
        if isinstance(message_id, str) and len(message_id) <= 256:
            summary["messageId"] = _bounded_text(message_id, 256)
    elif isinstance(message, (list, str)):
        summary["length"] = len(message)
    return summary


SUMMARY_FIELDS = frozenset({"truncated", "type", "reason", "bytes", "keys", "length", "messageId"})


def is_summary(payload: Any) -> bool:
    """Whether a dead letter's payload is a summary (``_summary``, or spoor.bad_rows') rather than a message."""
    return isinstance(payload, dict) and payload.get("truncated") is True and set(payload) <= SUMMARY_FIELDS


def _without_credentials(message: Any) -> Any:
    if isinstance(message, dict) and not CREDENTIAL_FIELDS.isdisjoint(message):
        return {k: v for k, v in message.items() if k not in CREDENTIAL_FIELDS}
    return message


def _bounded_text(value: Any, limit: int) -> str | None:
    """Text safe for a bad row, a 400 answer and a VARCHAR: no lone surrogates, no NUL (PostgreSQL has none;
    the bad row would hold U+FFFD and the answer should say the same), at most ``limit`` characters."""
    if value is None:
        return None
    text = SURROGATES.sub("\ufffd", value if isinstance(value, str) else str(value)).replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _stored_sent_at(value: Any) -> Any:
    """The batch's sentAt as a bad row keeps it for replay: as sent, unless it could never be a time."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64:
        return SURROGATES.sub("\ufffd", value)
    if isinstance(value, int) and INT_RANGE[0] <= value <= INT_RANGE[1]:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return {"truncated": True, "json_type": type(value).__name__}


def _exception_reason(err: BaseException) -> str:
    return _bounded_text(describe(err), MAX_REASON_CHARS) or type(err).__name__


# -- request bodies ---------------------------------------------------------------------------------

def parse_json(raw: bytes) -> Any:
    """A request body as orjson reads it, except that lone UTF-16 surrogate escapes (``"\\ud83d"``: what
    JSON.stringify makes of an emoji cut in half) become U+FFFD instead of failing the whole body, and
    with it every valid message of the batch. Raises orjson.JSONDecodeError for a body that is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if "surrogate" not in str(err):
            raise
        original = err
    try:  # the standard library keeps lone surrogates; read numbers as orjson would
        value = json.loads(raw.decode("utf-8"), parse_int=_json_int, parse_float=_json_float,
                           parse_constant=_json_constant)
    except (ValueError, RecursionError):
        raise original from None
    return _without_surrogates(value)


def _json_int(text: str) -> int | float:
    if len(text) <= 20:
        value = int(text)
        if INT_RANGE[0] <= value <= INT_RANGE[1]:
            return value
    return _json_float(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return value


def _json_constant(text: str):
    raise ValueError(f"not JSON: {text}")


def _without_surrogates(value: Any) -> Any:
    """Every string and key with lone surrogates replaced by U+FFFD, in place where possible. Iterative."""
    if isinstance(value, str):
        return SURROGATES.sub("\ufffd", value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if SURROGATES.search(k)]:
                node[SURROGATES.sub("\ufffd", key)] = node.pop(key)
            for key, child in node.items():
                if isinstance(child, str):
                    node[key] = SURROGATES.sub("\ufffd", child)
                elif isinstance(child, (dict, list)):
                    stack.append(child)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                if isinstance(child, str):
                    node[i] = SURROGATES.sub("\ufffd", child)
                elif isinstance(child, (dict, list)):
                    stack.append(child)
    return value
