"""Consent per purpose: the purposes, a statement of them, and how a message's categories map to them.

Pure, shared by the collector (which reads a Segment message's ``context.consent.categoryPreferences``
into the event's ``consent``), the worker (which withholds events without analytics consent from
profiling), campaigns (marketing) and recommendations (personalisation). docs/privacy.md#consent.
"""

from collections.abc import Mapping
from itertools import combinations
from typing import Any, Literal

from prometheus_client import Counter

from spoor.errors import SpoorError

ANALYTICS, MARKETING, PERSONALISATION = "analytics", "marketing", "personalisation"
PURPOSES = (ANALYTICS, MARKETING, PERSONALISATION)
# Segment's categoryPreferences keys are the consent manager's own category ids; these are the names a
# purpose answers to unless SPOOR_CONSENT_CATEGORIES says otherwise (compared case-insensitively).
DEFAULT_CATEGORIES: dict[str, list[str]] = {
    ANALYTICS: ["analytics", "performance", "statistics"],
    MARKETING: ["marketing", "advertising", "targeting"],
    PERSONALISATION: ["personalisation", "personalization"],
}
MAX_CATEGORIES = 100  # a categoryPreferences with more keys is not a consent manager's: refused

# One metric for every process (each exports its own): the worker counts events kept out of profiles,
# the campaign dispatcher deliveries dropped, whoever makes recommendation lists the lists made non-personal.
WITHHELD = Counter("spoor_consent_withheld_total",
                   "What was withheld for lack of consent, by purpose: analytics (events kept out of profiles, "
                   "sessions, windows, interests and the events table; counted in metric windows only; worker), "
                   "marketing (campaign deliveries dropped; campaigns runner), personalisation (recommendation "
                   "lists made non-personal, opt-outs included; segments runner, admin API).",
                   ["purpose"])


class ConsentError(SpoorError):
    """A categoryPreferences that is not an object of booleans; ``field`` is its path in the message."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# A statement, as an event carries it (``Event.consent``): the purposes granted, comma-separated in
# PURPOSES order ("" grants none). A short text keeps the canonical event cheap to decode (a nested model
# cost ~4 us more per event in the worker); Statement lists the eight values it may take.
STATEMENTS = tuple(",".join(c) for n in range(len(PURPOSES) + 1) for c in combinations(PURPOSES, n))
Statement = Literal[STATEMENTS]  # type: ignore[valid-type]
DENIED: dict[str, frozenset[str]] = {s: frozenset(PURPOSES) - frozenset(s.split(",")) for s in STATEMENTS}
ALL_GRANTED = ",".join(PURPOSES)


def statement_of(granted: Mapping[str, bool]) -> str:
    """The statement granting the purposes ``granted`` maps to true."""
    return ",".join(p for p in PURPOSES if granted.get(p))


def category_index(categories: Mapping[str, list[str]] | None = None) -> dict[str, str]:
    """category id (lower case) -> purpose, from a purpose -> category ids mapping."""
    return {name.lower(): purpose for purpose, names in (categories or DEFAULT_CATEGORIES).items()
            for name in names}


DEFAULT_INDEX = category_index()


def statement(context: Any, index: Mapping[str, str] = DEFAULT_INDEX) -> str | None:
    """The consent a message's context states, else None (no ``consent`` or no ``categoryPreferences``:
    the message says nothing, as in Segment's spec).

    A categoryPreferences object decides every purpose: a purpose is granted when one of its categories
    is true and none is false; a purpose none of whose categories is named is *not* granted (the visitor
    was not asked for it), so an empty object denies everything, as Segment reads it."""
    consent = context.get("consent") if isinstance(context, dict) else None
    if consent is None:
        return None
    if not isinstance(consent, dict):
        raise ConsentError("context.consent", "must be a JSON object")
    preferences = consent.get("categoryPreferences")
    if preferences is None:
        return None
    if not isinstance(preferences, dict):
        raise ConsentError("context.consent.categoryPreferences", "must be a JSON object")
    if len(preferences) > MAX_CATEGORIES:
        raise ConsentError("context.consent.categoryPreferences", f"may name at most {MAX_CATEGORIES} categories")
    said: dict[str, bool] = {}
    for category, value in preferences.items():
        if not isinstance(value, bool):
            raise ConsentError(f"context.consent.categoryPreferences.{str(category)[:64]}", "must be true or false")
        purpose = index.get(category.lower())
        if purpose is not None:
            said[purpose] = said.get(purpose, True) and value
    return statement_of(said)
