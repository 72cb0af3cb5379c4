"""Segment-spec messages, built and encoded when a call is made (so later changes by the caller don't leak in)."""

import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from spoor_sdk.version import VERSION

LIBRARY = {"name": "spoor-sdk-python", "version": VERSION}
CALL_OPTIONS = {"anonymous_id", "context", "timestamp", "message_id", "integrations", "consent"}
MAX_CATEGORIES = 100  # what the collector accepts (spoor/consent.py)
MAX_CATEGORY_CHARS = 64


def checked_preferences(preferences: Any) -> dict[str, bool]:
    """A copy of ``preferences`` (consent per purpose, e.g. ``{"analytics": True, "marketing": False}``);
    ValueError unless it is a mapping of at most MAX_CATEGORIES category names (1 to 64 characters) to
    booleans, as the browser SDK's ``spoor.consent`` checks it."""
    if not isinstance(preferences, Mapping):
        raise ValueError('consent needs a mapping of categories, e.g. {"analytics": True, "marketing": False}')
    if len(preferences) > MAX_CATEGORIES:
        raise ValueError(f"consent: at most {MAX_CATEGORIES} categories")
    for name, value in preferences.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CATEGORY_CHARS:
            raise ValueError(f"consent: category names are 1 to {MAX_CATEGORY_CHARS} characters, not {name!r:.80}")
        if not isinstance(value, bool):
            raise ValueError(f"consent: {name} must be True or False")
    return dict(preferences)


def build(msg_type: str, fields: dict[str, Any], *, user_id: Any = None, anonymous_id: Any = None,
          context: dict | None = None, timestamp: datetime | None = None, message_id: str | None = None,
          integrations: dict | None = None, consent: Mapping[str, bool] | None = None) -> dict:
    """One message. Raises ValueError for a call that can never be valid (a programming error).

    ``consent``: the person's consent per purpose, sent as Segment's ``context.consent.categoryPreferences``
    (it replaces a ``consent`` in ``context``); None: the message states none of its own."""
    if user_id in (None, "") and anonymous_id in (None, ""):
        raise ValueError(f"{msg_type}: user_id or anonymous_id is required")
    message: dict[str, Any] = {"type": msg_type, "messageId": message_id or str(uuid.uuid4()),
                               "timestamp": _iso(timestamp or datetime.now(timezone.utc)),
                               "context": {**(context or {}), "library": LIBRARY}}
    if consent is not None:
        message["context"]["consent"] = {"categoryPreferences": checked_preferences(consent)}
    if user_id not in (None, ""):
        message["userId"] = str(user_id)
    if anonymous_id not in (None, ""):
        message["anonymousId"] = str(anonymous_id)
    if integrations:
        message["integrations"] = integrations
    for key, value in fields.items():
        if value is not None:
            message[key] = value
    return message


def encode(message: dict) -> bytes:
    """Compact JSON; raises TypeError for a value JSON cannot carry."""
    return json.dumps(message, default=_json_default, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: Spoor reads money from strings as well as numbers
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot send a value of type {type(value).__name__} as JSON")
