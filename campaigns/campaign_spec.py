"""A campaign definition (YAML/JSON), validated. Pure.

    name: cart_rescue
    audience: {trigger: cart_abandonment}        # or {segment_entry: high_intent_browsers}
    action: {webhook: "https://crm.example/hooks/spoor"}   # or {kafka_topic: crm.email}
    delay: 30m                # after the trigger / segment entry
    frequency_cap: {max: 1, per: 7d}             # sends of this campaign per user
    quiet_hours: {start: "21:00", end: "08:00"}  # in the user's time zone
    expires_after: 2d         # not sent at all if it cannot go out within this time
    holdout_percent: 10       # stable per user: never sent, kept for the conversion report
    conversion_window_days: 7
    max_attempts: 5
    retry_backoff: 30s        # doubled after each failed attempt, at most 1 h
    message: {template: cart-reminder}           # passed through to the receiver
    recommendations: {k: 5}   # the user's top 5 products, computed at send time, in the payload
    variants:                 # A/B/n beside the holdout (none: one implicit variant, "default")
      - {name: reminder, weight: 50}
      - {name: discount, weight: 50, message: {template: cart-discount}, cost_per_message: 0.02}
    cost_per_message: 0.01    # what one sent message costs (the report's ROI), in the shop's currency
    fixed_cost: 200           # what the campaign costs whatever it sends
"""

import re
from datetime import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from spoor.campaigns import CampaignsError
from spoor.segments.segment_language import NAME_PATTERN, load_definition, parse_duration

TRIGGER_KINDS = ("cart_abandonment", "browse_abandonment", "win_back")
MAX_MESSAGE_BYTES = 10_000
MAX_RECOMMENDATIONS = 20
MAX_VARIANTS = 10
DEFAULT_VARIANT = "default"  # the one variant of a campaign that defines none
MAX_COST = 1e9


class CampaignDefinitionError(CampaignsError):
    pass


def _duration_or_zero(value: Any) -> int:
    return 0 if value in (0, "0", "0s", None) else parse_duration(value)


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    segment_entry: str | None = Field(None, pattern=NAME_PATTERN)
    trigger: Literal[TRIGGER_KINDS] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.segment_entry is None) == (self.trigger is None):
            raise ValueError("the audience is either {segment_entry: SEGMENT} or {trigger: KIND}")
        return self


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    webhook: str | None = Field(None, max_length=2048, pattern=r"^https?://[^\s]+$")
    kafka_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.webhook is None) == (self.kafka_topic is None):
            raise ValueError("the action is either {webhook: URL} or {kafka_topic: TOPIC}")
        return self


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hh_mm(cls, value: Any) -> time:
        if isinstance(value, str) and re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            return time.fromisoformat(value)
        raise ValueError("quiet hours are 'HH:MM' (24 h)")

    @field_serializer("start", "end")
    def _as_hh_mm(self, value: time) -> str:
        return value.strftime("%H:%M")

    @model_validator(mode="after")
    def _not_empty(self):
        if self.start == self.end:
            raise ValueError("quiet hours need start != end")
        return self


class FrequencyCap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max: int = Field(ge=1, le=1000)
    per: int

    _duration = field_validator("per", mode="before")(lambda v: parse_duration(v))


class Recommendations(BaseModel):
    """``{k: N}``: each message carries the user's top ``N`` products (storage/recommendations.py), and the
    holdout's would-be lists are kept too, for the report."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int

    @field_validator("k", mode="before")
    @classmethod
    def _whole_number_in_range(cls, value: Any) -> int:
        if type(value) is int and 1 <= value <= MAX_RECOMMENDATIONS:  # 5, not "5", 5.0 or true
            return value
        raise ValueError(f"k is a whole number from 1 to {MAX_RECOMMENDATIONS}, not {repr(value)[:40]}")

    @model_validator(mode="wrap")
    @classmethod
    def _a_mapping(cls, value: Any, handler):
        if isinstance(value, (dict, cls)):
            return handler(value)
        raise ValueError(f"recommendations is {{k: 1..{MAX_RECOMMENDATIONS}}} (how many products per message)")


def _small_message(value: dict | None) -> dict | None:
    if value is not None and len(orjson.dumps(value)) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message is limited to {MAX_MESSAGE_BYTES} bytes of JSON")
    return value


def _money(default: float | None, most: float):
    # strict: a number, not "0.01" or true; finite
    return Field(default, ge=0, le=most, strict=True, allow_inf_nan=False)


class Variant(BaseModel):
    """One arm of an A/B/n test: users not in the holdout are split between variants by ``weight``
    (campaign_rules.variant_for). A variant may carry its own message and cost per message."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    weight: float = Field(1, gt=0, le=1000, strict=True, allow_inf_nan=False)
    message: dict | None = None  # None: the campaign's message
    cost_per_message: float | None = _money(None, 1000)  # None: the campaign's

    _message = field_validator("message")(lambda v: _small_message(v))


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    audience: Audience
    action: Action
    delay: int = 0
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    expires_after: int | None = None
    holdout_percent: float = Field(0, ge=0, le=90)
    conversion_window_days: int = Field(7, ge=1, le=90)
    max_attempts: int = Field(5, ge=1, le=20)
    retry_backoff: int = 30
    message: dict = Field(default_factory=dict)
    recommendations: Recommendations | None = None
    variants: list[Variant] = Field(default_factory=list, max_length=MAX_VARIANTS)
    cost_per_message: float = _money(0, 1000)
    fixed_cost: float = _money(0, MAX_COST)

    _durations = field_validator("delay", "retry_backoff", mode="before")(lambda v: _duration_or_zero(v))

    @field_validator("expires_after", mode="before")
    @classmethod
    def _expiry(cls, value: Any) -> int | None:
        return None if value is None else parse_duration(value)

    _message = field_validator("message")(lambda v: _small_message(v))

    @field_validator("variants")
    @classmethod
    def _distinct_names(cls, value: list[Variant]) -> list[Variant]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must differ")
        if "holdout" in names:
            raise ValueError("'holdout' names the users who get nothing: choose another variant name")
        return value

    def arms(self) -> list[Variant]:
        """The variants users are split between: the defined ones, else one implicit ``default``."""
        return list(self.variants) or [Variant(name=DEFAULT_VARIANT)]

    def variant(self, name: str | None) -> Variant:
        """The named variant (rows enqueued before variants existed have none: the first)."""
        return next((v for v in self.arms() if v.name == name), self.arms()[0])


def parse_campaign(data: Any) -> CampaignSpec:
    data = load_definition(data, CampaignDefinitionError)
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as err:
        raise CampaignDefinitionError("; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'definition'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors(include_url=False))) from None
